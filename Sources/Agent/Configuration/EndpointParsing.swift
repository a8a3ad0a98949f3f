import NetworkAddress

/// `IP:PORT` or `[IPv6]:PORT`: a backend must name one address and one port.
public enum EndpointParsing {
    public struct Failure: Error {
        public let message: String
    }

    public static func parse(_ text: String) throws(Failure) -> Endpoint {
        let destination: Destination
        do { destination = try Destination(parsing: text) } catch { throw Failure(message: error.description) }
        guard let prefix = destination.prefix, prefix.isSingleHost else {
            throw Failure(message: "'\(text)' must be one address, not a prefix or a bare port")
        }
        guard let port = destination.port else {
            throw Failure(message: "'\(text)' has no port (write IP:PORT or [IPv6]:PORT)")
        }
        return Endpoint(address: prefix.address, port: port)
    }
}
