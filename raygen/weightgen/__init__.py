"""Neural-network weight generation by diffusion (p-diff, D2NWG) as pure torch functions (no Ray).

- `zoo`: the classifier, tasks derived from the data, member training (trajectory / tasks);
- `normalize`: per-tensor z-scoring; `autoencoder`: p-diff's noise-augmented parameter AE;
- `latent`: conditional EDM diffusion over latent vectors; `set_encoder`: D2NWG's dataset encoder;
- `evaluate`: accuracy summaries, memorisation (nearest original, wrong-set IoU), fine-tuning curves;
- `store`: zoos and generated weights as part stores; `train`: the AE and diffusion `train_func`s;
  `generate`: the generation chunk worker; `report`: tables, plots, markdown.
Flat parameter vectors <-> modules live in `raygen.models.params`. The Ray wiring (zoo and
generation fanned out as Ray tasks, training on Ray Train) is `raygen.workloads.weightgen`.
"""

from raygen.weightgen.autoencoder import ParamAutoencoder
from raygen.weightgen.latent import VectorDenoiser, latent_loss, sample_latents
from raygen.weightgen.normalize import TensorNorm
from raygen.models.params import ParamLayout, batched_accuracy, batched_logits, flatten, unflatten
from raygen.weightgen.set_encoder import SetEncoder

__all__ = ["ParamAutoencoder", "VectorDenoiser", "latent_loss", "sample_latents", "TensorNorm", "ParamLayout",
           "batched_accuracy", "batched_logits", "flatten", "unflatten", "SetEncoder"]
