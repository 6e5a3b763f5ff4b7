"""Codec B's networks: DiffEIC (Li et al., "Towards Extreme Image Compression with Latent
Feature Guidance and Diffusion Prior", arXiv:2404.18820; public code ``huai-chang/DiffEIC``).

Two stages, both trained on top of a *frozen* backbone (:mod:`egc_lite.training.diffeic`):

1. :class:`~.compressor.LatentCompressor` (the paper's latent feature-guided compression module). With
   :math:`z_0 = s\\,\\mathcal{E}(x)` the backbone's scaled VAE latent,

   .. math::
       y = g_a(x, z_0),\\quad w = h_a(y),\\quad \\hat w = \\lfloor w - \\mu_w \\rceil + \\mu_w,\\quad
       (\\sigma, \\mu) = h_s(\\hat w),\\quad \\hat y = \\lfloor y - \\mu \\rceil + \\mu,\\quad c = g_s(\\hat y).

   ``y`` has stride 16, the hyper-latent ``w`` (called ``z`` in CompressAI and in the file's
   section names) stride 64. ``w`` is coded with a factorized prior (``EntropyBottleneck``),
   ``y`` with a Gaussian conditional :math:`\\mathcal{N}(\\mu, \\sigma^2)` convolved with
   :math:`\\mathcal{U}(-\\frac12, \\frac12)` (the mean-scale hyperprior of Minnen et al. 2018). The
   *content variables* ``c`` have the shape of the backbone latent (``latent_channels x H/8 x W/8``).
   The VAE latent :math:`z_0` modulates the *encoder* only (the decoder never has it), in one of
   two ways (``DiffEICConfig.z0_modulation``): ``"concat"`` joins it to the stride-8 features of
   :math:`g_a` (the shipped rate points); ``"sft"`` follows the reference: spatial feature transforms
   (:class:`~.layers.SFT`, a per-pixel scale and shift :math:`x(1+\\gamma(f))+\\beta(f)` computed from
   :math:`z_0`'s features) at strides 8 and 16 of :math:`g_a` and at every stage of the
   hyper-analysis, :math:`w = h_a(y, z_0)`.

   Entropy model of ``y`` (``DiffEICConfig.context``): ``"none"`` is the mean-scale hyperprior above;
   ``"checkerboard"`` adds He et al.'s two-pass checkerboard context (anchors from the hyperprior,
   non-anchors also from the decoded anchors), over ELIC-style channel slices when
   ``context_slices`` is given (:class:`~.layers.CheckerboardContext`). Both are in one rANS stream ``y``.

   Not done (kept simple on purpose): the reference's SFT modulation of :math:`g_s` by the extra
   :math:`\\hat w \\to g_s` branch. Which options pay for themselves is measured by training rate
   points (the defaults are the shipped design until then).

2. A control module (``DiffEICConfig.control``; :class:`~.control.CDDMControl` by default) that injects ``c``
   into the frozen UNet through zero-initialised connections, so that training starts from the
   unchanged backbone:
   :math:`\\hat\\epsilon = \\epsilon_\\theta(z_t, t, \\varnothing;\\ \\mathrm{ctrl}_\\phi(z_t, t, c))`. The prompt is
   always empty (``backbone.null_cond``).

The rooms (training is :mod:`egc_lite.training.diffeic`, the codec :mod:`egc_lite.codecs.diffeic`):

* :mod:`.config` — :class:`~.config.DiffEICConfig`, the options of one rate point, and what a saved one records;
* :mod:`.layers` — the compressor's building blocks: SFT layers, the latent-modulated analysis transforms,
  the checkerboard context model;
* :mod:`.compressor` — :class:`~.compressor.LatentCompressor`: image (+ VAE latent) to bytes and content variables;
* :mod:`.control` — the control modules (:class:`~.control.CDDMControl`, :class:`~.control.NarrowControlNet`) and
  where they reach the UNet;
* :mod:`.model` — :class:`~.model.DiffEICModel` (compressor + control module of one rate point) and its files.
"""
