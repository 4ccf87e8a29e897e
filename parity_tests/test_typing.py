"""`perceiver_torch` is a typed package (PEP 561): mypy passes on it, and a user's checker sees its annotations.

The first test runs mypy with the project's configuration (pyproject.toml, [tool.mypy]) on the package. The
second type-checks a user's script against the package as installed: a throwaway virtual environment whose
site-packages holds only a link to this checkout's `perceiver_torch` (and a .pth line naming this interpreter's
site-packages, for torch and the rest), so mypy finds the package the way it finds an installed one, through its
py.typed marker (without it every name would be Any and the expected types below would fail).

Timing, measured on the 2-core development machine (shared) with mypy 1.13 and torch 2.13, no cache: 55 s for
the module, 48 s the package check (mypy analyses torch's stubs once) and 6 s the user's script, which reuses
that cache; run alone, the script's check takes 48 s. Under 90 s, so not marked slow. The cache lives under
pytest's tmp_path: the suite leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600  # a cold run takes about a minute on a loaded 2-core machine

# A user's script: each `# expect:` comment gives the type mypy must report for the `reveal_type` on its line (or,
# a comment alone on its line, on the next), as the docs promise.
USER_SCRIPT = textwrap.dedent("""
    from pathlib import Path

    import torch

    import perceiver_torch as pt

    model = pt.load_model("language.safetensors", dtype="bfloat16")
    reveal_type(model)  # expect: torch.nn.modules.module.Module
    reveal_type(pt.create_model("language-perceiver", pretrained=False))  # expect: torch.nn.modules.module.Module
    reveal_type(pt.save_model(model, Path("copy.safetensors")))  # expect: pathlib.Path
    reveal_type(pt.list_models())  # expect: builtins.list[builtins.str]
    reveal_type(pt.preset_names())  # expect: builtins.list[builtins.str]

    classifier = pt.build_model("imagenet", {"image_size": [224, 224], "num_classes": 1000})
    reveal_type(classifier)  # expect: torch.nn.modules.module.Module
    assert isinstance(classifier, pt.PerceiverForImageClassification)
    images = torch.zeros(2, 3, 224, 224)
    reveal_type(classifier.forward(images))  # expect: torch._tensor.Tensor
    latents = classifier.forward_features(images)
    reveal_type(latents)  # expect: torch._tensor.Tensor
    reveal_type(classifier.forward_head(latents, pre_logits=True))  # expect: torch._tensor.Tensor
    reveal_type(classifier.num_classes)  # expect: builtins.int
    reveal_type(classifier.num_features)  # expect: builtins.int
    reveal_type(classifier.labels)  # expect: builtins.tuple[builtins.str, ...]
    # expect: Union[perceiver_torch.layers.precision.FinalLinear, torch.nn.modules.linear.Identity]
    reveal_type(classifier.get_classifier())
    reveal_type(classifier.config)  # expect: builtins.dict[Any, Any]
    reveal_type(classifier.task)  # expect: builtins.str
    classifier.reset_classifier(10)
    reveal_type(classifier.classify("cat.jpg", k=5))  # expect: builtins.list[tuple[builtins.str, builtins.float]]
    # expect: builtins.list[builtins.list[tuple[builtins.str, builtins.float]]]
    reveal_type(classifier.classify(["cat.jpg", Path("dog.png")]))

    config: dict = {}  # a config.json's contents
    # expect: perceiver_torch.models.language.PerceiverForMaskedLM
    reveal_type(pt.PerceiverForMaskedLM.from_pretrained("language-perceiver"))
    lm = pt.PerceiverForMaskedLM(config)
    ids = torch.zeros(1, 8, dtype=torch.long)
    reveal_type(lm(ids))  # expect: Any
    reveal_type(lm.forward(ids, torch.ones_like(ids)))  # expect: torch._tensor.Tensor
    reveal_type(lm.forward_features(ids))  # expect: torch._tensor.Tensor
    reveal_type(lm.forward_head(lm.forward_features(ids), length=8, pre_logits=True))  # expect: torch._tensor.Tensor
    reveal_type(lm.head_hidden_size)  # expect: builtins.int
    reveal_type(lm.tokenizer.encode("text"))  # expect: builtins.list[builtins.int]
    reveal_type(lm.fill_masked("a [MASK]"))  # expect: builtins.str
    reveal_type(lm.fill_masked(["a [MASK]", "b"]))  # expect: builtins.list[builtins.str]
    reveal_type(lm.save_pretrained("my-lm"))  # expect: pathlib.Path
    reveal_type(lm.push_to_hub("me/my-lm"))  # expect: builtins.str

    flow = pt.build_model("optical_flow", {})
    if isinstance(flow, pt.PerceiverForOpticalFlow):
        frames = torch.zeros(1, 3, 368, 496)
        reveal_type(flow.estimate_flow(frames, frames))  # expect: torch._tensor.Tensor

    video = pt.build_preset("multimodal_perceiver")
    if isinstance(video, pt.PerceiverForMultimodalAutoencoding):
        clip, audio = torch.zeros(1, 16, 3, 224, 224), torch.zeros(1, 30720, 1)
        reveal_type(video.autoencode(clip, audio))  # expect: builtins.dict[Any, Any]

    reveal_type(pt.export_model(model, "model.pt2"))  # expect: pathlib.Path
    reveal_type(pt.compile_frozen(model))  # expect: def (*Any, **Any) -> Any
""")

_REVEALED = re.compile(r'^(?P<file>[^:]+):(?P<line>\d+): note: Revealed type is "(?P<type>.*)"$')


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One mypy cache for the module's runs (torch's stubs are analysed once)."""
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), "--cache-dir", str(cache),
           "--no-error-summary", "--hide-error-context", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYPY")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def _errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stdout.splitlines() if ": error: " in line]


def test_mypy_passes_on_the_package_with_the_project_config(cache_dir):
    result = _mypy(cwd=REPO, cache=cache_dir)  # the files it checks come from [tool.mypy]
    assert result.returncode == 0 and not _errors(result), \
        f"mypy exited {result.returncode}:\n{result.stdout}\n{result.stderr}"


def _installed_view(root: Path) -> Path:
    """A venv whose site-packages holds a link to this checkout's package (and a .pth to our dependencies)."""
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "perceiver_torch").symlink_to(REPO / "perceiver_torch", target_is_directory=True)
    ours = sysconfig.get_paths()
    (site / "_test_dependencies.pth").write_text("".join(f"{p}\n" for p in dict.fromkeys([ours["purelib"],
                                                                                           ours["platlib"]])))
    return python


def test_a_users_script_sees_the_documented_types_through_py_typed(tmp_path, cache_dir):
    assert (REPO / "perceiver_torch" / "py.typed").is_file()
    python = _installed_view(tmp_path)
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT)
    work = tmp_path / "elsewhere"  # not the checkout: the package must come from site-packages
    work.mkdir()
    result = _mypy("--python-executable", str(python), str(script), cwd=work, cache=cache_dir)
    output = f"mypy exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0 and not _errors(result), output

    revealed = {int(m["line"]): m["type"] for m in map(_REVEALED.match, result.stdout.splitlines()) if m}
    expected = {number + line.lstrip().startswith("#"): line.split("# expect: ", 1)[1].strip()
                for number, line in enumerate(USER_SCRIPT.splitlines(), start=1) if "# expect: " in line}
    assert expected and revealed == expected, output
