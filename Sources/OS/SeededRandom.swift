/// The one seeded generator (SplitMix64) of the code base: probe jitter, the policy's rebalancing
/// picks, the simulation's worlds. Nothing here needs to be unpredictable, and the system's
/// generator costs a getrandom call per draw; what does need a seed (a test replaying the policy's
/// picks, a simulated world) gets the same sequence for the same seed.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) {
        state = seed
    }

    /// Seeded from the system's generator, once.
    public init() {
        self.init(seed: .random(in: .min ... .max))
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var mixed = state
        mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
        return mixed ^ (mixed >> 31)
    }
}
