"""Hydra configs of stimopt core: config.yaml and the groups target/ generator/ optimizer/ logger/ objective/ experiment/."""
