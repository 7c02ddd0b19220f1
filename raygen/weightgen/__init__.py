"""Neural-network weight generation by diffusion (p-diff, D2NWG) as pure torch functions (no Ray).

- `params`: flat parameter vectors <-> modules, batched evaluation with functional_call + vmap;
- `zoo`: the classifier, tasks derived from the data, member training (trajectory / tasks);
- `normalize`: per-tensor z-scoring; `autoencoder`: p-diff's noise-augmented parameter AE;
- `latent`: conditional EDM diffusion over latent vectors; `set_encoder`: D2NWG's dataset encoder;
- `evaluate`: accuracy summaries, memorisation (nearest original, wrong-set IoU), fine-tuning curves.
The Ray wiring (zoo on Ray Data, training on Ray Train, report) is `raygen.workloads.weightgen`.
"""

from raygen.weightgen.autoencoder import ParamAutoencoder
from raygen.weightgen.latent import VectorDenoiser, latent_loss, sample_latents
from raygen.weightgen.normalize import TensorNorm
from raygen.weightgen.params import ParamLayout, batched_accuracy, batched_logits, flatten, unflatten
from raygen.weightgen.set_encoder import SetEncoder

__all__ = ["ParamAutoencoder", "VectorDenoiser", "latent_loss", "sample_latents", "TensorNorm", "ParamLayout",
           "batched_accuracy", "batched_logits", "flatten", "unflatten", "SetEncoder"]
