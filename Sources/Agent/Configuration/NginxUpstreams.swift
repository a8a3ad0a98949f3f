import NetworkAddress
import OS

/// The `upstream` blocks of an nginx configuration, in the http and stream contexts, turned into
/// the backends conn-reaper watches.
public struct NginxUpstream: Sendable, Equatable {
    public enum Context: String, Sendable { case http, stream }

    public struct Server: Sendable, Equatable {
        public var address: String
        public var endpoints: [Endpoint]
        public var down: Bool
        public var backup: Bool
    }

    public var name: String
    public var context: Context
    public var servers: [Server]

    /// Servers nginx may send traffic to: `down` ones are out of rotation, `backup` ones are in.
    public var activeEndpoints: [Endpoint] {
        var seen = Set<Endpoint>()
        return servers.filter { !$0.down }.flatMap(\.endpoints).filter { seen.insert($0).inserted }
    }
}

public enum NginxUpstreams {
    public typealias Resolver = (String) -> [IPAddress]

    public static func upstreams(
        in directives: [NginxDirective], resolve: Resolver = HostResolver.addresses
    ) throws(ConfigurationError) -> [NginxUpstream] {
        var found: [NginxUpstream] = []
        try collect(directives, context: nil, resolve: resolve, into: &found)
        return found
    }

    static func collect(
        _ directives: [NginxDirective], context: NginxUpstream.Context?, resolve: Resolver, into found: inout [NginxUpstream]
    ) throws(ConfigurationError) {
        for directive in directives {
            guard let children = directive.children else { continue }
            switch directive.name {
            case "http": try collect(children, context: .http, resolve: resolve, into: &found)
            case "stream": try collect(children, context: .stream, resolve: resolve, into: &found)
            case "upstream":
                guard let context, let name = directive.arguments.first else { continue }
                var upstream = NginxUpstream(name: name, context: context, servers: [])
                for server in children where server.name == "server" {
                    if let parsed = try self.server(server, context: context, resolve: resolve) { upstream.servers.append(parsed) }
                }
                found.append(upstream)
            default:
                try collect(children, context: context, resolve: resolve, into: &found)
            }
        }
    }

    static func server(
        _ directive: NginxDirective, context: NginxUpstream.Context, resolve: Resolver
    ) throws(ConfigurationError) -> NginxUpstream.Server? {
        guard let address = directive.arguments.first else {
            throw ConfigurationError(key: "server", "no address", file: directive.file, line: directive.line)
        }
        if address.hasPrefix("unix:") { return nil }  // a local socket has no peer to reap
        let flags = Set(directive.arguments.dropFirst())
        let (host, port) = try split(address, context: context, directive: directive)
        let endpoints: [Endpoint]
        if let literal = IPAddress(host) {
            endpoints = [Endpoint(address: literal, port: port)]
        } else {
            let addresses = resolve(host)
            guard !addresses.isEmpty else {
                throw ConfigurationError(key: "server", "host '\(host)' does not resolve", file: directive.file, line: directive.line)
            }
            endpoints = addresses.map { Endpoint(address: $0, port: port) }
        }
        return NginxUpstream.Server(address: address, endpoints: endpoints, down: flags.contains("down"), backup: flags.contains("backup"))
    }

    /// `host`, `host:port`, `[v6]`, `[v6]:port`. nginx defaults http upstreams to port 80 and
    /// requires a port in stream upstreams.
    static func split(_ address: String, context: NginxUpstream.Context, directive: NginxDirective) throws(ConfigurationError) -> (
        String, UInt16
    ) {
        let split: HostPort
        do { split = try HostPort(splitting: Substring(address)) } catch {
            throw ConfigurationError(key: "server", "'\(address)': \(error)", file: directive.file, line: directive.line)
        }
        let host = String(split.host)
        guard let portText = split.port else {
            guard context == .http else {
                throw ConfigurationError(
                    key: "server", "'\(address)': stream upstream servers need a port", file: directive.file, line: directive.line)
            }
            return (host, 80)
        }
        guard let port = UInt16(portText), port > 0 else {
            throw ConfigurationError(key: "server", "'\(address)': bad port", file: directive.file, line: directive.line)
        }
        return (host, port)
    }
}
