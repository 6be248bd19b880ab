"""experiment=noisy: the default CMA-ES on the coarse 8 x 8 Fourier code (the preset measured under Poisson-5)."""


def test_noisy_preset_is_cmaes_on_the_coarse_fourier_code(compose):
    from stimopt.experiment import build
    from stimopt_plugins.cma import CMAES

    cfg = compose(["experiment=noisy", "noise=poisson", "noise.expected_max_spikes=5"])
    assert cfg.generator.n_freq == 8 and cfg.noise.kind == "poisson"
    opt = build("optimizer", cfg.optimizer)
    assert isinstance(opt, CMAES) and opt.diagonal and opt.sigma0 == 0.5
    gen = build("generator", cfg.generator)
    assert gen.space.dim == 3 * 8 * 8
    opt.setup(gen.space, seed=0, budget=40, batch_size=20)
    assert opt.ask(20).shape == (20, 192)
    assert compose(["experiment=noisy", "generator.n_freq=12"]).generator.n_freq == 12  # still overridable
