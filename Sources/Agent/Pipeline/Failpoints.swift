import Foundation

/// Faults the kernel tests set through the environment, read once at start; unset, they cost a
/// dictionary lookup. A slow pass cannot be made slow on cue any other way without a table of a
/// million entries or hundreds of namespaces.
///
/// `CONN_REAPER_FAILPOINT_SLOW_NETNS=PATH=MS[,PATH=MS...]`: a reap pass waits MS milliseconds
/// before it works in the namespace file PATH, as a pass over a large table would.
enum Failpoints {
    static let slowNamespaces: [String: Duration] = parseSlowNamespaces(
        ProcessInfo.processInfo.environment["CONN_REAPER_FAILPOINT_SLOW_NETNS"] ?? "")

    static func parseSlowNamespaces(_ text: String) -> [String: Duration] {
        var pauses: [String: Duration] = [:]
        for item in text.split(separator: ",") {
            guard let equals = item.lastIndex(of: "="), let milliseconds = Int(item[item.index(after: equals)...]) else { continue }
            pauses[String(item[..<equals])] = .milliseconds(milliseconds)
        }
        return pauses
    }
}
