"""The diffusion math of LSGM, pure and CPU-testable: the SDEs (``sde``), the time sampling of each weighting
(``time_sampling``), the per-sample objective terms (``objectives``), the samplers (``sampling``) and the ODE likelihood
(``likelihood``). Nothing here knows a network: a score is a function ``(z_t [B, ...], t [B]) -> eps [B, ...]``."""
