"""Orchestrators: a run (`train`), an evaluation of a checkpoint (`evaluate`), the benchmark
(`benchmark`) and a sweep (`sweep`), with everything a run writes.

The workdir and its config (`workdir`), checkpoints (`checkpointing`),
metrics and progress (`metric_writers`), reports and figures (`report`,
`figures`, `aggregate`), atomic writes (`atomic_files`) and log filtering
(`logs`). Every orchestrator starts from the one setup path (`setup`).
"""
