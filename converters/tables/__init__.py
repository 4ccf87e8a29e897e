"""One conversion table per task: `rules(config)` and `IGNORED` leaves, by import path."""

TASK_TABLES = {
    "language": "converters.tables.language",
    "imagenet": "converters.tables.imagenet",
    "video_autoencoding": "converters.tables.video_autoencoding",
    "optical_flow": "converters.tables.optical_flow",
}
