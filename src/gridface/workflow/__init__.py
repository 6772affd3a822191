"""The pipeline of the TAO workflow (:mod:`gridface.pipeline`): the stage graph and its runner, the per-stage
manifests that make reruns skip finished work, the side-by-side benchmark of every artifact, and the report."""
