import torch

from raygen.data import digits_arrays
from raygen.metrics import sample_quality, train_feature_classifier


def test_feature_classifier_learns_digits_and_identical_sets_score_perfectly():
    images, labels = (torch.from_numpy(a) for a in digits_arrays())
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    model = train_feature_classifier(images[train], labels[train], generator=torch.Generator().manual_seed(0), steps=200, batch_size=128)
    with torch.no_grad():
        accuracy = (model(images[test]).argmax(1) == labels[test]).float().mean().item()
    assert accuracy > 0.9
    real = images[test]
    same = sample_quality(model, real, real, generator=torch.Generator().manual_seed(1))
    assert abs(same["fd"]) < 1e-6 and same["precision"] == 1.0 and same["recall"] == 1.0
    # uniform noise images are far from digits in the learned features
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(2))
    bad = sample_quality(model, real, noise, generator=torch.Generator().manual_seed(1))
    assert bad["fd"] > 100 * max(abs(same["fd"]), 1e-3) and bad["precision"] < 0.2
    # identical sets: KID is only the O(1/m) diagonal bias of the estimator, small against a real gap
    assert abs(same["kid"]) < 0.01 * bad["kid"]
