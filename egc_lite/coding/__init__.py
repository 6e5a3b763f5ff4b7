"""Bytes: the file container, entropy coding and the classic image codecs, nothing that runs a network.

* :mod:`.bitstream` — the checksummed ``.egc`` container every codec writes (no torch: ``egc info`` reads it);
* :mod:`.entropy` — quantization, bit counts, probability tables and range coding over CompressAI's
  ``EntropyBottleneck`` and ``GaussianConditional`` (always on the CPU in float32);
* :mod:`.classic` — JPEG, WebP and AVIF through Pillow, at a target rate (the guide image and the baselines);
* :mod:`.budget` — the memory a file's decoding would need, checked before anything is allocated.
"""
