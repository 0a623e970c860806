"""Fine-tuning stage: a registered backbone + task outputs trained on a dataset -> a variant.

`finetune` trains one network per bag of a `Recipe` (`recipes`) on the dataset's train split
(`training`), early-stopped on its validation split, and publishes each as a variant
``BACKBONE@NAME`` in the weights cache (`variants`) with its provenance. Every other stage
then uses the variant by name like any registered backbone::

    pipeline finetune --dataset abaw7 --backbone ddamfn --recipe ddamfn-mtl --name mtl
    pipeline extract  --dataset abaw7 --backbones ddamfn@mtl,ddamfn
    pipeline heads    --dataset abaw7

Heavy modules (torch) are imported inside `finetune`, so importing this package is cheap.
"""

from affectpipe.finetune.api import finetune
from affectpipe.finetune.recipes import RECIPES, Augment, Recipe, get_recipe

__all__ = ["RECIPES", "Augment", "Recipe", "finetune", "get_recipe"]
