"""The stages of the TAO workflow as functions: each ``run(cfg)`` takes a composed Hydra config and returns what
it wrote. The ``gridface.<stage>`` entry points and ``gridface.pipeline`` call them; they never call each other."""
