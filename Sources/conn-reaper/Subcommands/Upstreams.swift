import Agent
import ArgumentParser

struct Upstreams: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the upstream servers conn-reaper reads from an nginx configuration.",
        discussion: """
            What `run --nginx-conf FILE` would take its backends from: every upstream block of the http and \
            stream contexts, includes followed, host names resolved. Exit 2 when the file does not parse.
            """)

    @Argument(help: "The nginx configuration file.") var nginxConf: String
    @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

    func run() throws {
        let upstreams: [NginxUpstream]
        do { upstreams = try NginxUpstreams.upstreams(in: NginxConfigParser.parse(path: nginxConf)) } catch {
            standardError("conn-reaper: invalid nginx configuration: \(error)")
            throw ExitCode(2)
        }
        switch output {
        case .text:
            let rows = upstreams.flatMap { upstream in
                upstream.servers.map { server in
                    let flags = [server.down ? "down" : nil, server.backup ? "backup" : nil].compactMap { $0 }
                    return [
                        upstream.name, upstream.context.rawValue, server.address,
                        server.endpoints.map(\.description).joined(separator: " "),
                        flags.joined(separator: ","),
                    ]
                }
            }
            print(TextTable.text([["Upstream", "Context", "Server", "Endpoints", "Flags"]] + rows))
        case .json:
            print(Self.document(upstreams).text)
        }
    }

    /// `[{"name", "context", "servers": [{"address", "endpoints", "down", "backup"}]}]`, in file order.
    static func document(_ upstreams: [NginxUpstream]) -> JSONValue {
        .array(
            upstreams.map { upstream in
                .object([
                    ("name", .string(upstream.name)), ("context", .string(upstream.context.rawValue)),
                    (
                        "servers",
                        .array(
                            upstream.servers.map { server in
                                .object([
                                    ("address", .string(server.address)),
                                    ("endpoints", .array(server.endpoints.map { .string($0.description) })),
                                    ("down", .bool(server.down)), ("backup", .bool(server.backup)),
                                ])
                            })
                    ),
                ])
            })
    }
}
