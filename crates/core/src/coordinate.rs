//! Vivaldi network coordinates (reference 3.15): this node's estimate of where it sits in a
//! latency space, moved by every direct probe's round trip time and the peer's coordinate, and
//! the peers' coordinates as they last sent them.
//!
//! Pure arithmetic: RTTs and randomness come in as arguments. The Serf core feeds it from
//! memberlist's ping notifications ([`Coordinates::handle_ping_complete`]) and puts
//! [`Coordinates::ack_payload`] in its acks; the RPC `get-coordinate` reads the cache and
//! `serf rtt` computes [`distance`] on the client side. Nothing non-finite ever stays in the
//! state: an update that would produce one resets this node's coordinate instead.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::time::Duration;

use rand::Rng;

use super::wire::{self, COORDINATE_DIMENSIONS, Coordinate};

/// Below this, distances and errors count as zero (seconds).
const ZERO_THRESHOLD: f64 = 1.0e-6;

/// Longest round trip time an update accepts.
pub const MAX_RTT: Duration = Duration::from_secs(10);

/// Vivaldi's tuning parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Length of [`Coordinate::vec`]; peers with another length are rejected.
    pub dimensionality: NonZeroUsize,
    /// The error a new coordinate starts with and never exceeds.
    pub vivaldi_error_max: f64,
    /// How fast the error estimate moves (0..1).
    pub vivaldi_ce: f64,
    /// How far one sample moves the coordinate (0..1).
    pub vivaldi_cc: f64,
    /// Samples averaged into [`Coordinate::adjustment`]; 0 turns adjustments off.
    pub adjustment_window_size: usize,
    /// The smallest height, seconds.
    pub height_min: f64,
    /// RTT samples per peer whose median is used.
    pub latency_filter_size: NonZeroUsize,
    /// Distance (seconds) at which the pull towards the origin is as strong as one second of
    /// error; larger is weaker.
    pub gravity_rho: f64,
}

impl Config {
    /// Serf's settings: 8 dimensions, error max 1.5, ce and cc 0.25, adjustment window 20,
    /// height min 1e-5 s, latency filter 3, gravity rho 150.
    pub fn serf() -> Config {
        Config {
            dimensionality: NonZeroUsize::new(COORDINATE_DIMENSIONS).expect("not zero"),
            vivaldi_error_max: 1.5,
            vivaldi_ce: 0.25,
            vivaldi_cc: 0.25,
            adjustment_window_size: 20,
            height_min: 1.0e-5,
            latency_filter_size: NonZeroUsize::new(3).expect("not zero"),
            gravity_rho: 150.0,
        }
    }

    /// A coordinate at the origin with the largest error.
    pub fn new_coordinate(&self) -> Coordinate {
        Coordinate {
            vec: vec![0.0; self.dimensionality.get()],
            error: self.vivaldi_error_max,
            adjustment: 0.0,
            height: self.height_min,
        }
    }
}

/// Why an update was refused. None of these change any state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpdateError {
    #[error("dimensions aren't compatible: expected {expected}, got {got}")]
    Dimensions { expected: usize, got: usize },
    #[error("coordinate is invalid")]
    Invalid,
    #[error(
        "round trip time not in valid range, duration {0:?} is not a positive value less than {MAX_RTT:?}"
    )]
    Rtt(Duration),
}

/// Whether every component is finite.
pub fn is_valid(coordinate: &Coordinate) -> bool {
    coordinate.vec.iter().all(|c| c.is_finite())
        && coordinate.error.is_finite()
        && coordinate.adjustment.is_finite()
        && coordinate.height.is_finite()
}

/// The estimated round trip time between two coordinates: Euclidean distance plus both
/// heights, plus both adjustments if that keeps it positive. Truncated to whole nanoseconds;
/// a negative estimate (possible only with negative heights from a peer) is zero. `None` if
/// the dimensions differ.
pub fn distance(a: &Coordinate, b: &Coordinate) -> Option<Duration> {
    if a.vec.len() != b.vec.len() {
        return None;
    }
    let raw = raw_distance(a, b);
    let adjusted = raw + a.adjustment + b.adjustment;
    let seconds = if adjusted > 0.0 { adjusted } else { raw };
    // `as` saturates and maps NaN to 0, so hostile components cannot panic here.
    let nanos = (seconds * 1.0e9) as i64;
    Some(Duration::from_nanos(u64::try_from(nanos).unwrap_or(0)))
}

/// Distance without adjustments, seconds. The dimensions must match.
fn raw_distance(a: &Coordinate, b: &Coordinate) -> f64 {
    magnitude(a.vec.iter().zip(&b.vec).map(|(x, y)| x - y)) + a.height + b.height
}

fn magnitude(components: impl Iterator<Item = f64>) -> f64 {
    components.map(|c| c * c).sum::<f64>().sqrt()
}

/// The unit vector from `to` towards `from` and the distance between them; a random direction
/// (and distance 0) when they coincide.
fn unit_vector_at(from: &[f64], to: &[f64], rng: &mut impl Rng) -> (Vec<f64>, f64) {
    let diff: Vec<f64> = from.iter().zip(to).map(|(a, b)| a - b).collect();
    let mag = magnitude(diff.iter().copied());
    // Multiplying by the reciprocal rounds as Serf does.
    if mag > ZERO_THRESHOLD {
        return (diff.iter().map(|c| c * (1.0 / mag)).collect(), mag);
    }
    let random: Vec<f64> = (0..diff.len()).map(|_| rng.random::<f64>() - 0.5).collect();
    let mag = magnitude(random.iter().copied());
    if mag > ZERO_THRESHOLD {
        return (random.iter().map(|c| c * (1.0 / mag)).collect(), 0.0);
    }
    let mut unit = vec![0.0; diff.len()];
    if let Some(first) = unit.first_mut() {
        *first = 1.0;
    }
    (unit, 0.0)
}

/// `coordinate` pushed by `force` seconds away from `other` (towards it if negative).
fn apply_force(
    config: &Config,
    coordinate: &Coordinate,
    force: f64,
    other: &Coordinate,
    rng: &mut impl Rng,
) -> Coordinate {
    let (unit, mag) = unit_vector_at(&coordinate.vec, &other.vec, rng);
    let mut moved = coordinate.clone();
    for (component, direction) in moved.vec.iter_mut().zip(unit) {
        *component += direction * force;
    }
    if mag > ZERO_THRESHOLD {
        moved.height = (moved.height + other.height) * force / mag + moved.height;
        moved.height = moved.height.max(config.height_min);
    }
    moved
}

/// This node's Vivaldi state: its coordinate, the adjustment window and a median filter of
/// recent RTTs per peer.
#[derive(Debug, Clone)]
pub struct Client {
    config: Config,
    coordinate: Coordinate,
    origin: Coordinate,
    adjustment_index: usize,
    adjustment_samples: Vec<f64>,
    latency_samples: HashMap<String, VecDeque<f64>>,
    resets: u64,
}

impl Client {
    pub fn new(config: Config) -> Client {
        Client {
            coordinate: config.new_coordinate(),
            origin: config.new_coordinate(),
            adjustment_index: 0,
            adjustment_samples: vec![0.0; config.adjustment_window_size],
            latency_samples: HashMap::new(),
            resets: 0,
            config,
        }
    }

    /// This node's current coordinate.
    pub fn coordinate(&self) -> &Coordinate {
        &self.coordinate
    }

    /// Replaces this node's coordinate (for instance one restored from disk).
    pub fn set_coordinate(&mut self, coordinate: Coordinate) -> Result<(), UpdateError> {
        self.check(&coordinate)?;
        self.coordinate = coordinate;
        Ok(())
    }

    /// Drops the RTT samples kept for `node`.
    pub fn forget_node(&mut self, node: &str) {
        self.latency_samples.remove(node);
    }

    /// How often an update produced a non-finite coordinate and the coordinate was reset.
    pub fn num_resets(&self) -> u64 {
        self.resets
    }

    /// The estimated RTT from this node to `other`; `None` if the dimensions differ.
    pub fn distance_to(&self, other: &Coordinate) -> Option<Duration> {
        distance(&self.coordinate, other)
    }

    fn check(&self, coordinate: &Coordinate) -> Result<(), UpdateError> {
        if coordinate.vec.len() != self.coordinate.vec.len() {
            return Err(UpdateError::Dimensions {
                expected: self.coordinate.vec.len(),
                got: coordinate.vec.len(),
            });
        }
        if !is_valid(coordinate) {
            return Err(UpdateError::Invalid);
        }
        Ok(())
    }

    /// Moves this node's coordinate after a probe of `node`, whose coordinate is `other`,
    /// took `rtt`. `rng` picks a direction when the two coordinates coincide. Returns the new
    /// coordinate; on error nothing changed.
    pub fn update(
        &mut self,
        node: &str,
        other: &Coordinate,
        rtt: Duration,
        rng: &mut impl Rng,
    ) -> Result<&Coordinate, UpdateError> {
        self.check(other)?;
        if rtt > MAX_RTT {
            return Err(UpdateError::Rtt(rtt));
        }
        let rtt_seconds = self.latency_filter(node, rtt.as_secs_f64());
        self.update_vivaldi(other, rtt_seconds, rng);
        self.update_adjustment(other, rtt_seconds);
        self.update_gravity(rng);
        if !is_valid(&self.coordinate) {
            self.resets += 1;
            self.coordinate = self.config.new_coordinate();
            // Serf keeps the poisoned sample, which resets the next updates too.
            self.adjustment_samples.fill(0.0);
        }
        Ok(&self.coordinate)
    }

    /// Adds a sample for `node` and returns the median of its recent samples.
    fn latency_filter(&mut self, node: &str, rtt_seconds: f64) -> f64 {
        let size = self.config.latency_filter_size.get();
        let samples = self.latency_samples.entry(node.to_owned()).or_default();
        samples.push_back(rtt_seconds);
        while samples.len() > size {
            samples.pop_front();
        }
        let mut sorted: Vec<f64> = samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    fn update_vivaldi(&mut self, other: &Coordinate, rtt_seconds: f64, rng: &mut impl Rng) {
        let config = &self.config;
        let dist = distance(&self.coordinate, other).map_or(0.0, |d| d.as_secs_f64());
        let rtt_seconds = rtt_seconds.max(ZERO_THRESHOLD);
        let wrongness = (dist - rtt_seconds).abs() / rtt_seconds;
        let total_error = (self.coordinate.error + other.error).max(ZERO_THRESHOLD);
        let weight = self.coordinate.error / total_error;
        let error = config.vivaldi_ce * weight * wrongness
            + self.coordinate.error * (1.0 - config.vivaldi_ce * weight);
        self.coordinate.error = error.min(config.vivaldi_error_max);
        let force = config.vivaldi_cc * weight * (rtt_seconds - dist);
        self.coordinate = apply_force(config, &self.coordinate, force, other, rng);
    }

    fn update_adjustment(&mut self, other: &Coordinate, rtt_seconds: f64) {
        let window = self.adjustment_samples.len();
        if window == 0 {
            return;
        }
        // The adjustments themselves do not count here, hence the raw distance.
        let dist = raw_distance(&self.coordinate, other);
        self.adjustment_samples[self.adjustment_index] = rtt_seconds - dist;
        self.adjustment_index = (self.adjustment_index + 1) % window;
        let sum: f64 = self.adjustment_samples.iter().sum();
        self.coordinate.adjustment = sum / (2.0 * window as f64);
    }

    /// A weak pull towards the origin, so the whole cluster does not drift away.
    fn update_gravity(&mut self, rng: &mut impl Rng) {
        let dist = distance(&self.origin, &self.coordinate).map_or(0.0, |d| d.as_secs_f64());
        let force = -(dist / self.config.gravity_rho).powi(2);
        self.coordinate = apply_force(&self.config, &self.coordinate, force, &self.origin, rng);
    }
}

/// What Serf keeps about coordinates: this node's [`Client`] and the coordinate each peer last
/// sent in an ack, by name.
#[derive(Debug, Clone)]
pub struct Coordinates {
    local_name: String,
    client: Client,
    cache: HashMap<String, Coordinate>,
}

impl Coordinates {
    /// Serf's settings, for the node named `local_name`.
    pub fn new(local_name: String) -> Coordinates {
        Coordinates {
            local_name,
            client: Client::new(Config::serf()),
            cache: HashMap::new(),
        }
    }

    /// This node's coordinate.
    pub fn local(&self) -> &Coordinate {
        self.client.coordinate()
    }

    /// The coordinate of `node` (ours for our own name), if a probe brought one.
    pub fn get(&self, node: &str) -> Option<&Coordinate> {
        if node == self.local_name {
            return Some(self.local());
        }
        self.cache.get(node)
    }

    /// The payload of our acks: the version byte and this node's coordinate.
    pub fn ack_payload(&self) -> Vec<u8> {
        wire::encode_ping_payload(self.local())
    }

    /// A direct probe of `node` was acked after `rtt` with `payload`: moves this node's
    /// coordinate and remembers the peer's. A payload that does not decode, or a coordinate
    /// the client refuses, changes nothing.
    pub fn handle_ping_complete(
        &mut self,
        node: &str,
        rtt: Duration,
        payload: &[u8],
        rng: &mut impl Rng,
    ) {
        if payload.is_empty() {
            return;
        }
        let coordinate = match wire::decode_ping_payload(payload) {
            Ok(coordinate) => coordinate,
            Err(error) => {
                tracing::debug!(%node, %error, "ignoring an ack payload that is not a coordinate");
                return;
            }
        };
        if let Err(error) = self.client.update(node, &coordinate, rtt, rng) {
            tracing::trace!(%node, %error, "rejected coordinate");
            return;
        }
        if node != self.local_name {
            self.cache.insert(node.to_owned(), coordinate);
        }
    }

    /// Forgets everything about `node` (Serf does this when a member is erased).
    pub fn forget(&mut self, node: &str) {
        self.client.forget_node(node);
        self.cache.remove(node);
    }

    /// How often this node's coordinate was reset.
    pub fn num_resets(&self) -> u64 {
        self.client.num_resets()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    fn at(vec: &[f64]) -> Coordinate {
        Coordinate {
            vec: vec.to_vec(),
            error: 1.5,
            adjustment: 0.0,
            height: 1.0e-5,
        }
    }

    fn ms(millis: f64) -> Duration {
        Duration::from_secs_f64(millis / 1000.0)
    }

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn defaults_are_serfs() {
        let config = Config::serf();
        assert_eq!(config.dimensionality.get(), 8);
        assert_eq!(config.vivaldi_error_max, 1.5);
        assert_eq!(config.vivaldi_ce, 0.25);
        assert_eq!(config.vivaldi_cc, 0.25);
        assert_eq!(config.adjustment_window_size, 20);
        assert_eq!(config.height_min, 1.0e-5);
        assert_eq!(config.latency_filter_size.get(), 3);
        assert_eq!(config.gravity_rho, 150.0);
        assert_eq!(config.new_coordinate(), Coordinate::new());
    }

    #[test]
    fn distance_is_euclidean_plus_heights_plus_positive_adjustments() {
        let mut a = at(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let mut b = at(&[3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        a.height = 0.5;
        b.height = 0.25;
        assert_eq!(distance(&a, &b), Some(Duration::from_millis(5750)));
        a.adjustment = 0.1;
        b.adjustment = 0.15;
        assert_eq!(distance(&a, &b), Some(Duration::from_millis(6000)));
        // An adjustment that would make the estimate negative is left out.
        a.adjustment = -4.0;
        b.adjustment = -3.0;
        assert_eq!(distance(&a, &b), Some(Duration::from_millis(5750)));
        assert_eq!(distance(&a, &at(&[0.0; 3])), None);
    }

    #[test]
    fn distance_of_hostile_coordinates_never_panics() {
        let mut a = Coordinate::new();
        a.height = -1.0e300;
        assert_eq!(distance(&a, &Coordinate::new()), Some(Duration::ZERO));
        a.height = f64::NAN;
        assert_eq!(distance(&a, &Coordinate::new()), Some(Duration::ZERO));
        a.height = 1.0e300;
        assert!(distance(&a, &Coordinate::new()).is_some());
    }

    /// 45 updates from four peers, replayed through Serf 0.9.4's own coordinate package:
    /// the result must match bit for bit (no step hits the random direction).
    #[test]
    fn updates_match_serf_bit_for_bit() {
        let mut client = Client::new(Config::serf());
        let mut rng = rng();
        for step in 0..45_i64 {
            let mut other = Coordinate::new();
            for (i, component) in other.vec.iter_mut().enumerate() {
                *component = 0.001 * ((step * 7 + i as i64 * 3) % 11 - 5) as f64;
            }
            other.error = 0.2 + 0.1 * (step % 5) as f64;
            other.height = 1e-5 + 1e-4 * (step % 3) as f64;
            other.adjustment = -1e-4 * (step % 4) as f64;
            let rtt = Duration::from_nanos((1_000_000 + (step * 379 % 17) * 250_000) as u64);
            client
                .update(&format!("n{}", step % 4), &other, rtt, &mut rng)
                .expect("valid update");
        }
        let bits = |c: &Coordinate| {
            let mut bits: Vec<u64> = c.vec.iter().map(|v| v.to_bits()).collect();
            bits.extend([c.error, c.adjustment, c.height].map(f64::to_bits));
            bits
        };
        let expected: [u64; 11] = [
            0xbf23d55821606383,
            0xbf3c1a489e298843,
            0x3f324db2e0febb58,
            0x3f278428600c4056,
            0xbf214bc00784dca1,
            0x3efb522c2d15e7b5,
            0xbf188a8b40067641,
            0x3f20665d3213e01a,
            0x3ff3e74c76a241ac, // error
            0xbf679843470b426d, // adjustment
            0x3ee4f8b588e368f1, // height
        ];
        assert_eq!(bits(client.coordinate()), expected);
        let mut probe = Coordinate::new();
        probe.vec[0] = 0.003;
        assert_eq!(
            client.distance_to(&probe),
            Some(Duration::from_nanos(344_053))
        );
        assert_eq!(client.num_resets(), 0);
    }

    #[test]
    fn latency_filter_uses_the_median_of_the_last_three_samples() {
        let mut client = Client::new(Config::serf());
        assert_eq!(client.latency_filter("a", 0.201), 0.201);
        assert_eq!(client.latency_filter("a", 0.200), 0.201);
        assert_eq!(client.latency_filter("a", 0.207), 0.201);
        // 0.201 falls out of the window.
        assert_eq!(client.latency_filter("a", 1.9), 0.207);
        assert_eq!(client.latency_filter("a", 0.203), 0.207);
        assert_eq!(client.latency_filter("a", 0.199), 0.203);
        // Every node has its own window, and forgetting a node empties it.
        assert_eq!(client.latency_filter("b", 0.5), 0.5);
        client.forget_node("a");
        assert_eq!(client.latency_filter("a", 0.3), 0.3);
    }

    #[test]
    fn one_update_moves_towards_the_measured_rtt() {
        let mut client = Client::new(Config::serf());
        let mut rng = rng();
        let other = at(&[0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let before = client.distance_to(&other).expect("same dimensions");
        let updated = client
            .update("other", &other, ms(100.0), &mut rng)
            .expect("valid update")
            .clone();
        let after = distance(&updated, &other).expect("same dimensions");
        assert!(after > before, "{before:?} -> {after:?}");
        assert!(updated.error < 1.5, "{updated:?}");
        assert!(updated.height >= 1.0e-5);
        // Pushed away from the other node, along the first axis.
        assert!(updated.vec[0] < 0.0, "{updated:?}");
        assert!(
            updated.vec[1..].iter().all(|c| c.abs() < 1e-9),
            "{updated:?}"
        );
    }

    #[test]
    fn coincident_nodes_are_pushed_apart_in_some_direction() {
        let mut client = Client::new(Config::serf());
        let updated = client
            .update("twin", &Coordinate::new(), ms(50.0), &mut rng())
            .expect("valid update")
            .clone();
        assert!(is_valid(&updated));
        assert!(updated.vec.iter().any(|c| *c != 0.0), "{updated:?}");
    }

    #[test]
    fn invalid_inputs_are_refused_and_change_nothing() {
        let mut client = Client::new(Config::serf());
        let mut rng = rng();
        let start = client.coordinate().clone();
        let short = at(&[0.0; 3]);
        assert_eq!(
            client.update("x", &short, ms(1.0), &mut rng),
            Err(UpdateError::Dimensions {
                expected: 8,
                got: 3
            })
        );
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut other = Coordinate::new();
            other.vec[3] = bad;
            assert_eq!(
                client.update("x", &other, ms(1.0), &mut rng),
                Err(UpdateError::Invalid)
            );
            for field in 0..3 {
                let mut other = Coordinate::new();
                match field {
                    0 => other.error = bad,
                    1 => other.adjustment = bad,
                    _ => other.height = bad,
                }
                assert_eq!(
                    client.update("x", &other, ms(1.0), &mut rng),
                    Err(UpdateError::Invalid)
                );
            }
        }
        let too_long = MAX_RTT + Duration::from_nanos(1);
        assert_eq!(
            client.update("x", &Coordinate::new(), too_long, &mut rng),
            Err(UpdateError::Rtt(too_long))
        );
        assert_eq!(client.coordinate(), &start);
        assert!(client.latency_samples.is_empty());
        let mut bad = Coordinate::new();
        bad.error = f64::NAN;
        assert_eq!(client.set_coordinate(bad), Err(UpdateError::Invalid));
        // Zero and the maximum are accepted.
        assert!(
            client
                .update("x", &Coordinate::new(), Duration::ZERO, &mut rng)
                .is_ok()
        );
        assert!(
            client
                .update("y", &Coordinate::new(), MAX_RTT, &mut rng)
                .is_ok()
        );
    }

    #[test]
    fn extreme_but_finite_peers_reset_instead_of_poisoning_the_state() {
        let mut client = Client::new(Config::serf());
        let mut rng = rng();
        let mut huge = Coordinate::new();
        huge.vec[0] = 1.0e308;
        huge.height = 1.0e308;
        huge.adjustment = 1.0e308;
        for _ in 0..5 {
            let updated = client
                .update("huge", &huge, ms(1.0), &mut rng)
                .expect("finite input is accepted");
            assert!(is_valid(updated), "{updated:?}");
        }
        assert!(client.num_resets() > 0);
        assert!(client.adjustment_samples.iter().all(|s| s.is_finite()));
        // A sane peer afterwards moves the coordinate normally again.
        client.forget_node("huge");
        let resets = client.num_resets();
        for _ in 0..5 {
            client
                .update("sane", &at(&[0.001; 8]), ms(2.0), &mut rng)
                .expect("valid update");
        }
        assert_eq!(client.num_resets(), resets);
        assert!(is_valid(client.coordinate()));
    }

    #[test]
    fn arbitrary_updates_never_leave_non_finite_state() {
        use proptest::prelude::*;
        let component = prop_oneof![
            any::<f64>(),
            -1.0e3..1.0e3f64,
            Just(0.0),
            Just(f64::MAX),
            Just(f64::MIN_POSITIVE),
        ];
        let coordinate = (
            proptest::collection::vec(component.clone(), 7..=9),
            component.clone(),
            component.clone(),
            component,
        )
            .prop_map(|(vec, error, adjustment, height)| Coordinate {
                vec,
                error,
                adjustment,
                height,
            });
        let step = (0usize..4, coordinate, 0u64..=11_000_000_000);
        proptest!(|(steps in proptest::collection::vec(step, 1..40), seed in any::<u64>())| {
            let mut client = Client::new(Config::serf());
            let mut rng = SmallRng::seed_from_u64(seed);
            for (node, other, nanos) in steps {
                let _ = client.update(&format!("n{node}"), &other, Duration::from_nanos(nanos), &mut rng);
                prop_assert!(is_valid(client.coordinate()));
                prop_assert!(client.adjustment_samples.iter().all(|s| s.is_finite()));
                prop_assert!(client.distance_to(&other).is_some() == (other.vec.len() == 8));
            }
        });
    }

    /// Nodes on a line, 10 ms apart, as RTTs: every node probes a random peer each round.
    #[test]
    fn a_small_cluster_converges_to_its_rtt_matrix() {
        const NODES: usize = 5;
        let positions: [f64; NODES] = [0.0, 10.0, 20.0, 30.0, 40.0];
        let rtt = |i: usize, j: usize| ms((positions[i] - positions[j]).abs() * 2.0 + 1.0);
        let mut rng = rng();
        let mut clients: Vec<Client> = (0..NODES).map(|_| Client::new(Config::serf())).collect();
        for _ in 0..2000 {
            for i in 0..NODES {
                let j = (i + rng.random_range(1..NODES)) % NODES;
                let other = clients[j].coordinate().clone();
                clients[i]
                    .update(&format!("n{j}"), &other, rtt(i, j), &mut rng)
                    .expect("valid update");
            }
        }
        for i in 0..NODES {
            for j in 0..NODES {
                if i == j {
                    continue;
                }
                let estimate =
                    secs(distance(clients[i].coordinate(), clients[j].coordinate()).unwrap());
                let truth = secs(rtt(i, j));
                let relative = (estimate - truth).abs() / truth;
                assert!(
                    relative < 0.15,
                    "n{i} -> n{j}: estimated {estimate:.4}s, measured {truth:.4}s"
                );
            }
            assert!(
                clients[i].coordinate().error < 0.3,
                "{:?}",
                clients[i].coordinate()
            );
            assert_eq!(clients[i].num_resets(), 0);
        }
    }

    #[test]
    fn the_cache_holds_peers_as_sent_and_ourselves_as_we_are() {
        let mut coordinates = Coordinates::new("me".into());
        let mut rng = rng();
        assert_eq!(coordinates.get("me"), Some(&Coordinate::new()));
        assert_eq!(coordinates.get("peer"), None);
        assert_eq!(
            coordinates.ack_payload(),
            wire::encode_ping_payload(&Coordinate::new())
        );

        let peer = at(&[0.002, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let payload = wire::encode_ping_payload(&peer);
        coordinates.handle_ping_complete("peer", ms(5.0), &payload, &mut rng);
        assert_eq!(coordinates.get("peer"), Some(&peer));
        assert_ne!(coordinates.local(), &Coordinate::new());
        assert_eq!(coordinates.get("me"), Some(coordinates.local()));
        assert_eq!(
            wire::decode_ping_payload(&coordinates.ack_payload()).as_ref(),
            Ok(coordinates.local())
        );

        coordinates.forget("peer");
        assert_eq!(coordinates.get("peer"), None);
    }

    #[test]
    fn bad_payloads_and_refused_coordinates_are_ignored() {
        let mut coordinates = Coordinates::new("me".into());
        let mut rng = rng();
        let mut wrong_version = wire::encode_ping_payload(&Coordinate::new());
        wrong_version[0] = 2;
        let mut nan = Coordinate::new();
        nan.height = f64::NAN;
        let payloads = [
            Vec::new(),
            vec![1],
            vec![1, 0xc1],
            b"coordinate".to_vec(),
            wrong_version,
            wire::encode_ping_payload(&at(&[0.0; 2])),
            wire::encode_ping_payload(&nan),
        ];
        for payload in &payloads {
            coordinates.handle_ping_complete("peer", ms(5.0), payload, &mut rng);
        }
        let fine = wire::encode_ping_payload(&Coordinate::new());
        coordinates.handle_ping_complete("slow", Duration::from_secs(11), &fine, &mut rng);
        assert_eq!(coordinates.get("peer"), None);
        assert_eq!(coordinates.get("slow"), None);
        assert_eq!(coordinates.local(), &Coordinate::new());
    }
}

/// Serf nodes on the simulator with a fixed one-way delay per link: probes move the
/// coordinates.
#[cfg(test)]
mod serf_tests {
    use std::time::Duration;

    use super::*;
    use crate::{Config as SerfConfig, MemberStatus, Serf, Tags};
    use serf_gossip::sim::{Sim, run_seeded, sim_addr};

    /// One-way delay between two nodes: n0-n1 5 ms, n0-n2 and n1-n2 15 ms.
    fn delay(i: usize, j: usize) -> Duration {
        if i + j == 1 {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(15)
        }
    }

    /// `n` nodes named `n<i>`, lossless, with [`delay`] on every link.
    fn net(seed: u64, n: usize) -> Sim<Serf> {
        let mut sim = Sim::with_peers(seed, n, |i, seed, start| {
            let config = SerfConfig::lan(format!("n{i}"), sim_addr(i), Tags::new());
            Serf::new(config, seed, start)
        })
        .lossless();
        sim.link_delay = Some(delay);
        sim
    }

    fn millis(d: Option<Duration>) -> f64 {
        d.expect("same dimensions").as_secs_f64() * 1000.0
    }

    #[test]
    fn probes_move_coordinates_towards_the_link_delays_and_erasing_forgets_them() {
        run_seeded(1, |seed| {
            let mut net = net(seed, 3);
            for i in 1..3 {
                assert_eq!(net.join_and_wait(i, sim_addr(0)).joined, 1);
            }
            assert_eq!(net.nodes[0].peer.coordinate("n0"), Some(Coordinate::new()));
            assert_eq!(net.nodes[0].peer.coordinate("n1"), None);
            net.run_for(Duration::from_secs(60));

            for i in 0..3 {
                let serf = &net.nodes[i].peer;
                assert_ne!(
                    serf.local_coordinate(),
                    Coordinate::new(),
                    "n{i} never moved"
                );
                assert_eq!(
                    serf.coordinate(&format!("n{i}")),
                    Some(serf.local_coordinate())
                );
                assert!(serf.local_coordinate().error < 1.5, "n{i}");
                for j in (0..3).filter(|&j| j != i) {
                    let peer = serf
                        .coordinate(&format!("n{j}"))
                        .expect("a cached coordinate");
                    let estimate = millis(distance(&serf.local_coordinate(), &peer));
                    let rtt = 2.0 * delay(i, j).as_secs_f64() * 1000.0;
                    assert!(
                        estimate > rtt * 0.5 && estimate < rtt * 1.5,
                        "n{i} -> n{j}: estimated {estimate:.2} ms for a {rtt} ms round trip"
                    );
                }
            }
            // The acks carry the coordinate the peer had then, so caches lag by at most a probe.
            let n1 = net.nodes[1].peer.local_coordinate();
            let cached = net.nodes[0].peer.coordinate("n1").expect("cached");
            let moved = magnitude(n1.vec.iter().zip(&cached.vec).map(|(a, b)| a - b));
            assert!(moved < 0.005, "{n1:?} vs {cached:?}");

            // n2 dies; once it is failed and pruned, its coordinate is gone.
            net.crash(2);
            net.run_for(Duration::from_secs(30));
            let status = |serf: &Serf| serf.members().find(|m| m.name == "n2").map(|m| m.status);
            assert_eq!(status(&net.nodes[0].peer), Some(MemberStatus::Failed));
            assert!(net.nodes[0].peer.coordinate("n2").is_some());
            net.act(0, |serf, now| serf.force_leave(now, "n2", true));
            assert_eq!(status(&net.nodes[0].peer), None);
            assert_eq!(net.nodes[0].peer.coordinate("n2"), None);
            assert!(net.nodes[0].peer.coordinate("n1").is_some());
        });
    }
}
