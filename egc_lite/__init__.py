"""egc_lite: extreme generative image compression with latent diffusion.

The rooms, lowest first (a module imports only from its own room and the rooms above it in this list;
``tests/test_layout.py`` checks it):

* ``errors``, ``progress``, ``precision``, :mod:`.weights` — errors, progress bars, bf16 or float32, where weights are;
* ``metrics`` — PSNR, MS-SSIM, LF-PSNR, sharpness, learned metrics when their weights exist;
* :mod:`.coding` — bytes: the ``.egc`` container, entropy models and range coding, classic codecs, memory budget;
* ``data`` — images in and out, padding, Kodak and the training photos;
* :mod:`.models` — the networks: autoencoders, egc-tiny's builders, codec B's compressor and control modules;
* ``backbone`` — the frozen latent diffusion model the codecs run on, loaded by name, folder or hub id;
* ``guide`` — the guide image: degradation, classic coding, upsampling;
* :mod:`.sampling` — DDIM/DDPM sampling, classifier-free and compression guidance, consistency;
* :mod:`.codecs` — the codecs by name: compress and decompress only;
* :mod:`.training` and :mod:`.evaluate` — every training loop; ``egc eval``, ``egc sweep``, ``egc demo``;
* ``cli`` — the ``egc`` command, which nothing imports.

Importing the package imports nothing else.
"""
