import Foundation
import Simulation

// `make sim`: SIM_WORLDS worlds from SIM_SEED (or a time-based start); exits 1 with the shrunk trace
// of the first world that breaks an invariant.
let environment = ProcessInfo.processInfo.environment
let count = environment["SIM_WORLDS"].flatMap { Int($0) } ?? 100_000
let first = environment["SIM_SEED"].flatMap { UInt64($0) } ?? UInt64(Date().timeIntervalSince1970)
let started = Date()
// A line on stderr every 50,000 worlds: a long run shows how far it got.
let result = Explorer.explore(from: first, count: count, every: 50_000) { done in
    let line = "\(done) worlds from seed \(first) clean after \(String(format: "%.0f", Date().timeIntervalSince(started))) s\n"
    FileHandle.standardError.write(Data(line.utf8))
}
let seconds = Date().timeIntervalSince(started)
print(
    "simulated \(result.worlds) worlds from seed \(first) in \(String(format: "%.1f", seconds)) s: \(result.ends) connections ended, "
        + "\(result.failure == nil ? 0 : 1) violations")
if let failure = result.failure {
    print(failure.report)
    // SIM_TRACE=all: the whole trace of the shrunk run, not only its last 60 lines.
    if environment["SIM_TRACE"] == "all" { print(failure.trace.joined(separator: "\n")) }
    exit(1)
}
