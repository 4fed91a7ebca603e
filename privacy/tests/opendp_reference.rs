//! The fast sampler against opendp, the reference it replaces on the hot path: the same
//! distribution, and a calibration that is never less conservative.

use dashu::rational::RBig;
use fedfuse_privacy::noise::{DiscreteGaussian, GridGaussian};
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::L2Distance;
use rand::SeedableRng;

#[test]
fn same_distribution_as_opendps_sampler() {
    // Two-sample chi-square homogeneity test, σ = 5, bins [−15, 15] plus pooled tails.
    let n = 40_000;
    let sigma = 5u64;
    let ours = DiscreteGaussian::new(sigma);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let bin = |y: i64| (y.clamp(-16, 16) + 16) as usize;
    let mut a = vec![0f64; 33];
    let mut b = vec![0f64; 33];
    for _ in 0..n {
        a[bin(ours.sample(&mut rng))] += 1.0;
        let theirs = opendp::traits::samplers::sample_discrete_gaussian(RBig::from(sigma)).unwrap();
        b[bin(i64::try_from(theirs).unwrap())] += 1.0;
    }
    let mut chi2 = 0.0;
    let mut dof = 0;
    for (x, y) in a.iter().zip(&b) {
        if x + y >= 10.0 {
            chi2 += (x - y).powi(2) / (x + y);
            dof += 1;
        }
    }
    // With ~31 degrees of freedom the 99.9% quantile is about 61.1.
    assert!(dof >= 25, "too few bins: {dof}");
    assert!(chi2 < 61.1, "chi2 {chi2} over {dof} bins");
}

#[test]
fn calibration_is_opendps_or_more_conservative() {
    for (sigma, k, dims, sensitivity) in [(1.0, -20, 1_000_000usize, 1.0), (0.8, -16, 50_000, 0.5), (3.0, -24, 10, 2.0)] {
        let domain = VectorDomain::new(AtomDomain::<f32>::new_non_nan()).with_size(dims);
        let m = make_gaussian::<_, _, ZeroConcentratedDivergence>(domain, L2Distance::<f64>::default(), sigma, Some(k)).unwrap();
        let rho_opendp = m.map(&sensitivity).unwrap();
        let rho_ours = GridGaussian::new(sigma, k).unwrap().rho(sensitivity, dims);
        assert!(
            rho_ours >= rho_opendp,
            "σ={sigma} k={k}: ours {rho_ours} < opendp {rho_opendp}"
        );
        assert!(
            (rho_ours - rho_opendp) / rho_opendp < 1e-6,
            "σ={sigma} k={k}: ours {rho_ours} vs opendp {rho_opendp}"
        );
    }
}
