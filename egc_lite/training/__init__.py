"""Every training loop of the kit (each resumable, each runs under ``accelerate launch``); nothing in the
codecs imports this package.

* :mod:`.backbone` — egc-tiny's three phases (autoencoder, decoder with a critic, UNet) and its export;
* :mod:`.diffeic` — one DiffEIC rate point (codec B's compressor and control module) and its export;
* :mod:`.textinv_prior` — codec A's embedding prior for a backbone;
* :mod:`.losses` — every training objective (with the critic and the timestep sampling);
* :mod:`.loop` — what the loops share: the photo folders, random crops, checkpoint and log files.
"""
