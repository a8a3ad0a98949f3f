import Durations
import FuzzHarness
import Agent
import NetworkAddress

/// The readers of what operators write: the YAML configuration, nginx.conf with its includes, and
/// the values both are made of. Anything may be refused with an error; nothing may trap.
enum ConfigTargets {
    static let all: [String: FuzzTarget] = [
        "yaml": yaml,
        "nginx": nginx,
        "values": values,
    ]

    static func yaml(_ bytes: [UInt8]) {
        _ = try? YAMLConfigReader.configuration(yaml: String(decoding: bytes, as: UTF8.self), file: "fuzz.yaml")
    }

    static func nginx(_ bytes: [UInt8]) {
        NginxScratch.shared.parse(bytes)
    }

    /// Every value parser, and the round trips operators rely on: what one prints, it reads back.
    static func values(_ bytes: [UInt8]) {
        let text = String(decoding: bytes, as: UTF8.self)
        if let destination = try? Destination(parsing: text) {
            let again = try? Destination(parsing: destination.description)
            precondition(
                again == destination, "destination '\(text)' prints as '\(destination)', which reads back as \(String(describing: again))")
        }
        if let endpoint = try? EndpointParsing.parse(text) {
            let again = try? EndpointParsing.parse(endpoint.description)
            precondition(again == endpoint, "endpoint '\(text)' prints as '\(endpoint)', which reads back as \(String(describing: again))")
        }
        if let duration = DurationParsing.parse(text) {
            _ = DurationParsing.format(duration)
        }
        _ = try? DurationParsing.parseChecked(text)
        _ = IPAddress(text)
        _ = try? ConfigValue.int(text, in: 1...100)
        _ = try? ConfigValue.percent(text, in: 1...100)
        _ = try? ConfigValue.rate(text, maximum: 1000)
        _ = try? ConfigValue.namespaces(text.split(separator: ",").map(String.init))
        _ = try? ConfigValue.transports(text.split(separator: ",").map(String.init))
    }
}
