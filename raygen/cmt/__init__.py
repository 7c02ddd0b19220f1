"""Few-shot domain adaptation by causal mechanism transfer (Teshima, Sato & Sugiyama, ICML 2020).

Pure numpy / torch / scikit-learn (no Ray): `inn` (Glow-like invertible net), `gcl` (nonlinear ICA by
generalized contrastive learning), `augment` (cross-sample recombination + one-class-SVM filter),
`krr` (kernel ridge with closed-form LOOCV), `datasets` (Gasoline panel, synthetic data with known f),
`methods` (the method and its baselines on one split), `report` (tables and plots).
"""
