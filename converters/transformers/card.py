"""The README.md model card written beside an exported transformers model."""

from __future__ import annotations

import json

from .catalog import for_class
from .provenance import licence, source_sentence


def model_card(task: str, architecture: str, config: dict, meta: dict) -> str:
    rows = "\n".join(f"| {d.title} | {d.cause} | {d.exported} |" for d in for_class(architecture))
    licence_id, licence_text = licence(meta)
    return f"""---
library_name: transformers
license: {licence_id}
tags: [perceiver, perceiver-io]
---

# {architecture} exported by perceiver-torch

Task `{task}`. {source_sentence(meta)}, renamed to transformers' layout by perceiver-torch's strict
converters without changing any value (`perceiver-convert {task} --from-transformers` on this directory
gives back the same tensors).

Load with `transformers.{architecture}.from_pretrained(<this directory>)`. `config.json` sets
`hidden_act` to `gelu_pytorch_tanh`, the tanh GELU DeepMind's models were trained with; its
`perceiver_torch` key holds the perceiver-torch config (importing uses it only while transformers'
fields agree with it).

## Licence and attribution

{licence_text}

## Where transformers still differs from DeepMind's release

transformers fixes these in its code, so no config can remove them. Measured effects are in
perceiver-torch's README (`python -m converters.transformers.divergence`).

| difference | cause in transformers | in this export |
| --- | --- | --- |
{rows}

## perceiver-torch config

```json
{json.dumps(config, indent=1, sort_keys=True)}
```
"""
