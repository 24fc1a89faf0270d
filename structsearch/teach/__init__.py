"""Train a teacher worth shipping: ``structsearch teach RECIPE.yaml`` (a recipe in ``studies/``).

The search distils *from* a trained teacher; this package makes one when none exists, e.g. the
CIFAR-10 ViT (``cifar_vit``) that ViT students inherit from. It is a DeiT-style run -- a
transformer trained with cross-entropy plus distillation from a trained CNN (the shared ResNet-56)
-- sized for a CPU: cheap augmentation, AdamW with warm-up + cosine, resumable from its own
checkpoint, and an fp16 safetensors export with a JSON sidecar that says how it was made.

* :mod:`~structsearch.teach.recipe` -- the YAML recipe (Pydantic; every check happens there);
* :mod:`~structsearch.teach.run` -- the training run, its checkpoint, evaluation and export.
"""

from structsearch.teach.recipe import TeachRecipe, load_recipe
from structsearch.teach.run import TeachResult, export_teacher, teach

__all__ = ["TeachRecipe", "TeachResult", "export_teacher", "load_recipe", "teach"]
