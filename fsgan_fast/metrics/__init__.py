"""fsgan_fast.metrics: FID, KID, LPIPS diversity and SIFID, and each paper's protocol (``fsgan-fast eval``).

The math (:mod:`.frechet`, :mod:`.kid`) is float64 and checked against pytorch-fid / torch-fidelity; the features
come from :mod:`.inception` (the FID Inception graph, weights from a local file); :mod:`.protocols` holds the
models' ``evaluate`` functions.
"""

from fsgan_fast.metrics.frechet import FeatureStats, fid_from_stats, frechet_distance
from fsgan_fast.metrics.inception import FIDInception, InceptionWeightsMissing
from fsgan_fast.metrics.kid import kid
from fsgan_fast.metrics.sifid import sifid

__all__ = ["FeatureStats", "fid_from_stats", "frechet_distance", "FIDInception", "InceptionWeightsMissing", "kid",
           "sifid"]
