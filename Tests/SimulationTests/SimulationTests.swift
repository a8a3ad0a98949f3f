import Simulation
import Testing

/// A few thousand seeded worlds on every `make test`; `make sim` explores many more.
@Suite struct SimulationTests {
    @Test func twoThousandWorldsKeepEveryInvariant() {
        let result = Explorer.explore(from: 1, count: 2_000)
        #expect(result.failure == nil, "\(result.failure?.report ?? "")")
        #expect(result.worlds == 2_000)
        #expect(result.ends > 0, "no world ended anything: the invariants were never put to the test")
    }

    /// The worlds that once broke an invariant, each through a product defect fixed since (the
    /// simulation's README names them): every `make test` replays them.
    @Test(
        arguments: [
            4_741, 6_407, 60_504_184, 80_525_658, 100_702_108, 120_422_496, 120_768_847, 130_383_060, 150_181_092, 150_644_579,
            180_001_364,
        ] as [UInt64])
    func aWorldThatOnceFailedKeepsEveryInvariant(seed: UInt64) {
        let result = Explorer.explore(from: seed, count: 1)
        #expect(result.failure == nil, "\(result.failure?.report ?? "")")
    }

    @Test func aSeedReplaysExactly() {
        let first = Explorer.run(World.generate(seed: 42)), second = Explorer.run(World.generate(seed: 42))
        #expect(first.trace == second.trace)
    }
}
