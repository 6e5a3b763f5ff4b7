"""Turning noise into latents: the sampler and what steers it.

* :mod:`.ddim` — seeded DDIM (and DDPM-like) sampling with classifier-free guidance and guidance hooks;
* :mod:`.tiled` — the UNet run on overlapping windows of a large latent, blended seamlessly;
* :mod:`.guidance` — compression guidance towards the transmitted guide image (codec A);
* :mod:`.consistency` — low-frequency consistency with the guide (ILVR, beyond the paper);
* :mod:`.analytic` — exact denoisers for Gaussian data, to test the above against closed forms.
"""
