//! Rendezvous (highest-random-weight) hashing for the query `key` (SPEC §6.10).
//!
//! Every candidate gets a weight for the key; the heaviest wins. Because a candidate's weight
//! depends only on the key and on that candidate, removing a candidate moves only the keys it
//! won, and adding one moves only the keys it now wins, with no shared ring to keep in sync
//! between nodes. XXH3-64 is fixed by the spec so every node and build agrees.
//!
//! ```text
//! identity(c) = UTF-8(application_id) ‖ 0x00 ‖ UTF-8(client_id)
//! seed(c)     = XXH3_64bits(identity(c))
//! weight(c)   = XXH3_64bits_withSeed(UTF-8(key), seed(c))
//! ```

use std::cmp::Ordering;
use std::iter;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// `XXH3_64bits(app ‖ 0x00 ‖ client)`: a candidate's seed. It does not depend on the key, so a
/// caller may compute it once per client and use [`weight_with_seed`].
pub fn seed(app: &str, client: &str) -> u64 {
    let mut identity = Vec::with_capacity(app.len() + 1 + client.len());
    identity.extend_from_slice(app.as_bytes());
    identity.push(0);
    identity.extend_from_slice(client.as_bytes());
    xxh3_64(&identity)
}

/// The weight of candidate `app`/`client` for `key`.
pub fn weight(key: &str, app: &str, client: &str) -> u64 {
    weight_with_seed(key, seed(app, client))
}

/// The weight for `key` of the candidate whose [`seed`] is `seed`.
pub fn weight_with_seed(key: &str, seed: u64) -> u64 {
    xxh3_64_with_seed(key.as_bytes(), seed)
}

/// The candidate that wins `key`: the largest weight, and on a tie the smallest identity bytes.
/// `None` when there are no candidates.
///
/// Each candidate is `(handle, application_id, client_id)`; the handle is returned as is.
pub fn winner<'a, C>(
    key: &str,
    cands: impl IntoIterator<Item = (C, &'a str, &'a str)>,
) -> Option<C> {
    cands
        .into_iter()
        .map(|(c, app, client)| (weight(key, app, client), app, client, c))
        .reduce(|best, next| {
            let order = next
                .0
                .cmp(&best.0)
                .then_with(|| cmp_identity((best.1, best.2), (next.1, next.2)));
            if order == Ordering::Greater {
                next
            } else {
                best
            }
        })
        .map(|(_, _, _, c)| c)
}

/// Compares `app ‖ 0x00 ‖ client` bytewise without building either byte string.
fn cmp_identity(a: (&str, &str), b: (&str, &str)) -> Ordering {
    identity_bytes(a).cmp(identity_bytes(b))
}

fn identity_bytes<'a>((app, client): (&'a str, &'a str)) -> impl Iterator<Item = u8> + 'a {
    app.bytes().chain(iter::once(0)).chain(client.bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENTS: [&str; 4] = ["a", "b", "c", "d"];

    fn pick(key: &str, clients: &[&'static str]) -> Option<&'static str> {
        winner(key, clients.iter().map(|c| (*c, "svc", *c)))
    }

    #[test]
    fn seeds_and_weights_match_the_spec_vectors() {
        let vectors = [
            (
                "a",
                0xcedc_a4b0_56a1_55ea,
                0x5a99_97b8_5161_b29f,
                0xa1da_cc69_d376_602b,
            ),
            (
                "b",
                0x5034_42f5_ed5e_0d78,
                0x2f9b_fdbd_84b2_59a9,
                0xa892_dbca_0992_3e23,
            ),
            (
                "c",
                0x9420_7801_23e3_8274,
                0x03bc_b058_dc91_2350,
                0x26a0_1952_2aec_bed2,
            ),
            (
                "d",
                0x9ffe_379c_e999_b4a1,
                0x0410_fddf_e919_65b3,
                0xb427_0830_d580_c6ef,
            ),
        ];
        for (client, s, user42, order7) in vectors {
            assert_eq!(seed("svc", client), s, "seed {client}");
            assert_eq!(weight("user-42", "svc", client), user42, "user-42 {client}");
            assert_eq!(weight("order-7", "svc", client), order7, "order-7 {client}");
            assert_eq!(weight_with_seed("user-42", s), user42);
        }
    }

    #[test]
    fn winners_match_the_spec_vectors() {
        assert_eq!(pick("user-42", &CLIENTS), Some("a"));
        assert_eq!(pick("user-42", &["b", "c", "d"]), Some("b"));
        assert_eq!(pick("user-42", &["a", "b", "d"]), Some("a"));
        assert_eq!(pick("user-42", &["a", "b", "c"]), Some("a"));
        assert_eq!(pick("order-7", &CLIENTS), Some("d"));
        assert_eq!(pick("order-7", &["a", "b", "c"]), Some("b"));
        assert_eq!(pick("", &CLIENTS), Some("b"));
        assert_eq!(pick("user-42", &[]), None);
    }

    #[test]
    fn identity_ties_break_on_the_separated_bytes() {
        // The separator sorts below every id byte, so the shorter application sorts first.
        assert_eq!(cmp_identity(("ab", "c"), ("a", "bc")), Ordering::Greater);
        assert_eq!(cmp_identity(("a", "b"), ("a", "b")), Ordering::Equal);
        assert_eq!(cmp_identity(("a", "b"), ("a", "c")), Ordering::Less);
    }
}
