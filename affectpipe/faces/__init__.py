"""Face detectors with 5 landmarks (a registry like the backbones': `registry`), the ABAW
5-point alignment to 112 x 112 (`align`) and tracking across video frames (`tracking`).

Used by `pipeline predict` (`affectpipe.predict.face_check`) and `pipeline index --format videos`.
"""
