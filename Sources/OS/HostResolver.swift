import CLinuxNetlink
import NetworkAddress

#if canImport(Glibc)
    import Glibc
#endif

/// Name resolution through the system resolver (getaddrinfo), wrapped once.
public enum HostResolver {
    public static func addresses(_ host: String) -> [IPAddress] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0 else { return [] }
        defer { freeaddrinfo(list) }
        var result: [IPAddress] = []
        var cursor = list
        while let entry = cursor?.pointee {
            if let pointer = entry.ai_addr, let address = address(from: pointer), !result.contains(address) {
                result.append(address)
            }
            cursor = entry.ai_next
        }
        return result
    }

    static func address(from pointer: UnsafeMutablePointer<sockaddr>) -> IPAddress? {
        switch Int32(pointer.pointee.sa_family) {
        case AF_INET:
            return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { .v4(UInt32(bigEndian: $0.pointee.sin_addr.s_addr)) }
        case AF_INET6:
            return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                let b = $0.pointee.sin6_addr.__in6_u.__u6_addr8
                return IPAddress(networkBytes: [b.0, b.1, b.2, b.3, b.4, b.5, b.6, b.7, b.8, b.9, b.10, b.11, b.12, b.13, b.14, b.15])
            }
        default:
            return nil
        }
    }
}
