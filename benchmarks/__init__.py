"""Speed and latency of PS models against their standard counterparts,
measured in one process per comparison. Run each from the repository root
as a module, e.g. `python -m benchmarks.layer_speed --quick --write-docs`;
`--write-docs` puts the printed table into docs/benchmarks.md (`report`)."""
