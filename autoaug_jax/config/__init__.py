"""Config: the schema (every key and its default), validation, and the builders.

`schema` holds every key; `validation` refuses impossible values before
anything loads; `builders` turns a config into the objects a run is made of;
`sweeps` expands a study into one config per member and seed.
"""
