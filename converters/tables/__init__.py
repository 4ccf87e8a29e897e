"""One conversion table per task: `rules(config)` and `IGNORED` leaves, by import path."""

TASK_TABLES = {
    "language": "converters.tables.language",
    "optical_flow": "converters.tables.optical_flow",
}
