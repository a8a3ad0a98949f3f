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

    @Test func aSeedReplaysExactly() {
        let first = Explorer.run(World.generate(seed: 42)), second = Explorer.run(World.generate(seed: 42))
        #expect(first.trace == second.trace)
    }
}
