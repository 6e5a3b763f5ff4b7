"""Bytes: the file container, entropy coding and the classic image codecs, nothing that runs a network.

* :mod:`.bitstream` — the checksummed ``.egc`` container every codec writes (no torch: ``egc info`` reads it),
  built on :mod:`.wire` (varints, typed values, a bounds-checked reader);
* :mod:`.entropy` — the entropy models: quantization, bit counts, probability tables (built and loaded on the
  CPU in float32) over CompressAI's ``EntropyBottleneck`` and ``GaussianConditional``;
* :mod:`.range_coding` — symbols to bytes and back with those tables (CompressAI's rANS, made safe);
* :mod:`.classic` — JPEG, WebP and AVIF through Pillow, at a target rate (the guide image and the baselines);
* :mod:`.budget` — the memory budget: the decoder checks a file against it before allocating, the encoder before writing.
"""
