"""Evaluation: one table for every codec, papermill sweeps over a notebook's parameters, the demo.

The modules, used by the command line (``egc eval``, ``egc sweep``, ``egc demo``) and by the notebooks:

* :mod:`.store` — a resumable table of records (one JSON line each, keyed), written out as CSV and JSON;
* :mod:`.runner` — ``egc eval``: codecs x rates x images, one row per (image, codec, setting);
* :mod:`.summary` — means per (codec, setting) as a data frame and a Markdown table (and the benchmarks' tables);
* :mod:`.distribution` — FID/KID at the HiFiC patch protocol (when Inception weights are on disk);
* :mod:`.plots` — rate-distortion and perception-distortion plots, sweep heatmaps and lines;
* :mod:`.record` — how a notebook records scalars for a sweep (:func:`~.record.record`);
* :mod:`.grid` — ``egc sweep``: a YAML grid, papermill per point, local processes or Dask;
* :mod:`.demo` — ``egc demo``: one photo through a codec, beside the guide codec and WebP at the same rate;
* :mod:`.scale_sweep` — codec A's decoding scales :math:`(s_c, s_f)` over a grid, and notebook 02's sliders;
* :mod:`.entropy_lab` — codec B's compressor taken apart (latents, bits per part, a quantisation-step panel), notebook 03;
* :mod:`.rans_toy` — a rANS coder in a few lines, byte-equal to the package's coder, notebook 03;
* :mod:`.notebook_data` — the notebooks' images, with a fallback to the shipped photo on a fresh clone.

Submodules are imported where they are used (Dask, papermill and pandas are slow to import).
"""
