"""Every training loop of the kit (each resumable, each runs under ``accelerate launch``).

* :mod:`.backbone` — egc-tiny's three phases (autoencoder, decoder with a critic, UNet) and its export.
"""
