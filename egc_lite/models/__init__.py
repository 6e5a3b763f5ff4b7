"""Networks: the autoencoders the kit runs (``taef2``), egc-tiny's builders, codec B's networks."""
