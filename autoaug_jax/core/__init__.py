"""The pure core: tasks, inner loop, per-task objective, meta-step, evaluation, adaptation.

Everything here is a pure function of explicit arguments (parameters, data
on device, keys) or builds one; nothing reads a config or writes a file. Data flow:
task sampler (`tasks`) -> augmenter -> inner loop (`inner_loop`) -> per-task
objective (`objective`) -> meta-step (`meta_step`) -> evaluation
(`evaluation`, `adaptation`); `sharding` lays tasks out over the device mesh
and `rng` names every random stream.
"""
