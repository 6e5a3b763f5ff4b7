"""Evaluation: one table for every codec, and papermill sweeps over a notebook's parameters.

The rooms, each used by the command line (``egc eval``, ``egc sweep``) and by notebooks 05 and 06:

* :mod:`.store` — a resumable table of records (one JSON line each, keyed), written out as CSV and JSON;
* :mod:`.runner` — ``egc eval``: codecs x rates x images, one row per (image, codec, setting);
* :mod:`.summary` — means per (codec, setting) as a data frame and a Markdown table;
* :mod:`.distribution` — FID/KID at the HiFiC patch protocol (when Inception weights are on disk);
* :mod:`.plots` — rate-distortion and perception-distortion plots, sweep heatmaps and lines;
* :mod:`.record` — how a notebook records scalars for a sweep (:func:`record`);
* :mod:`.grid` — ``egc sweep``: a YAML grid, papermill per point, local processes or Dask.

Submodules are imported where they are used (Dask, papermill and pandas are slow to import).
"""
