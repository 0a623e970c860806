"""Data stage: dataset readers -> the manifest (`pipeline index`), and synthetic demo data.

`index.index_dataset` is the entry point; `formats/` holds one reader per layout
(abaw-mtl, abaw-va/expr/au, csv), `records` and `labels` the located, column-wise parsing
they share, `summary` the printed report, `synthetic` and `faces` the demo dataset.
"""
