//! Recommendations with a query and explanations, on a small synthetic store.

use fedfuse_data::synthetic::{SyntheticConfig, generate};
use fedfuse_model::catalog::ItemFeatures;
use fedfuse_model::fit::{ModelShape, TITLE_LEN};
use fedfuse_model::recommend::{Basis, RecommendError, Recommender};

#[test]
fn recommendations_follow_the_query_explain_themselves_and_fall_back_to_popular() {
    let dataset = generate(&SyntheticConfig {
        shoppers: 200,
        items: 150,
        events: 4000,
        ..SyntheticConfig::default()
    })
    .unwrap();
    let device = burn::tensor::Device::flex();
    device.seed(4);
    let features = ItemFeatures::from_catalog(&dataset.catalog);
    let vocabulary = features.vocabulary(TITLE_LEN);
    let shape = ModelShape {
        dim: 16,
        max_len: 10,
        ..ModelShape::default()
    };
    let model = shape.config(&vocabulary).init(&device);
    let tensors = features.to_tensors(vocabulary, &device);
    let mut counts = vec![0u32; dataset.catalog.len()];
    dataset.interactions.iter().for_each(|e| counts[e.item as usize] += 1);
    let r = Recommender::new(&model, &tensors, &dataset.catalog, &counts);

    let history: Vec<u32> = dataset
        .interactions
        .iter()
        .filter(|e| e.shopper == 0)
        .map(|e| e.item)
        .collect();
    assert!(!history.is_empty());
    let plain = r.recommend(&history, None, 10).unwrap();
    assert_eq!(plain.basis, Basis::Personal);
    assert_eq!(plain.items.len(), 10);
    for rec in &plain.items {
        assert!(!history.contains(&rec.item), "recommended a history item");
        // The branch contributions add up to the fused score.
        let sum: f32 = rec.explanation.branches.iter().map(|(_, c)| c).sum();
        assert_eq!(rec.explanation.branches.len(), 4);
        assert!(
            (sum - rec.personal).abs() <= 1e-4 * rec.personal.abs().max(1.0),
            "{sum} vs {}",
            rec.personal
        );
        assert!(
            rec.explanation
                .attended
                .iter()
                .all(|(i, w)| history.contains(i) && *w > 0.0 && *w <= 1.0 + 1e-5)
        );
        assert!(!rec.explanation.attended.is_empty());
    }
    assert!(plain.items.windows(2).all(|w| w[0].score >= w[1].score), "sorted by score");

    // A query: the word of some title. Items holding it must rise to the top.
    let word = dataset
        .catalog
        .tokens
        .name(dataset.catalog.items[7].title[0])
        .unwrap()
        .to_owned();
    let holders = (0..dataset.catalog.len())
        .filter(|i| dataset.catalog.items[*i].title.contains(&dataset.catalog.items[7].title[0]))
        .count();
    let searched = r.recommend(&history, Some(&word), 10).unwrap();
    let matching = searched.items.iter().filter(|x| x.explanation.query_match > 0.0).count();
    assert!(
        matching >= 10.min(holders) / 2,
        "{matching} of 10 match {word:?} ({holders} items hold it)"
    );
    assert_eq!(
        searched.items[0].explanation.query_match, 1.0,
        "the best result matches {word:?}"
    );

    // No history: the store's popular items.
    let cold = r.recommend(&[], None, 5).unwrap();
    assert_eq!(cold.basis, Basis::Popular);
    let most = (0..counts.len()).max_by_key(|i| (counts[*i], std::cmp::Reverse(*i))).unwrap() as u32;
    assert_eq!(cold.items[0].item, most);
    assert!(cold.items[0].explanation.branches.is_empty());

    // The fast path agrees with the explained one.
    let fast = r.top_k(std::slice::from_ref(&history), 10).unwrap();
    assert_eq!(fast[0], plain.items.iter().map(|x| x.item).collect::<Vec<_>>());

    // An item beyond the catalog is an error naming it, on both paths, not an index panic.
    let n = dataset.catalog.len();
    let stale = vec![history[0], n as u32 + 3];
    let unknown = RecommendError::UnknownItem {
        item: n as u32 + 3,
        items: n,
    };
    assert_eq!(r.recommend(&stale, None, 5).unwrap_err(), unknown);
    assert_eq!(r.top_k(&[history.clone(), stale], 5).unwrap_err(), unknown);
}
