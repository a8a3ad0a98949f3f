import Netlink
import NetworkAddress

/// Compiles a set of destinations into the inet_diag filter program the kernel runs on every
/// socket during the dump (net/ipv4/inet_diag.c inet_diag_bc_run), so only matches cross to us.
///
/// The program is an OR chain: `cond1, JMP end, cond2, JMP end, ..., condN`. A matching condition
/// falls through into its JMP, which lands exactly on the end (accept); a failing one skips its JMP
/// to the next condition; the last one's failure lands 4 bytes past the end (reject). The kernel's
/// audit follows the `yes` offsets, so they all step forward through the program.
public enum InetDiagBytecode {
    static let jump: UInt8 = 1  // INET_DIAG_BC_JMP
    static let destinationCondition: UInt8 = 8  // INET_DIAG_BC_D_COND
    static let operationSize = 4  // struct inet_diag_bc_op
    static let hostConditionSize = 8  // struct inet_diag_hostcond without its address

    public static func program(matchingAny destinations: [Destination]) -> [UInt8] {
        let conditions = destinations.map(condition)
        var program: [UInt8] = []
        var remaining = conditions.reduce(0) { $0 + $1.count } + operationSize * (conditions.count - 1)
        for (index, body) in conditions.enumerated() {
            let size = body.count
            let isLast = index == conditions.count - 1
            program += operation(destinationCondition, yes: size, no: size + operationSize) + body.dropFirst(operationSize)
            remaining -= size
            if !isLast {
                program += operation(jump, yes: operationSize, no: remaining)
                remaining -= operationSize
            }
        }
        return program
    }

    /// One D_COND with its offsets left blank: op, hostcond{family, prefix_len, port}, address.
    static func condition(_ destination: Destination) -> [UInt8] {
        let port = destination.port.map(Int32.init) ?? -1
        var bytes = operation(destinationCondition, yes: 0, no: 0)
        if let prefix = destination.prefix {
            bytes.append(prefix.address.family == .v4 ? 2 : 10)  // AF_INET, AF_INET6
            bytes.append(UInt8(prefix.length))
            bytes += [0, 0] + port.hostOrderBytes + prefix.address.networkBytes
        } else {
            bytes += [0, 0, 0, 0] + port.hostOrderBytes  // AF_UNSPEC, prefix 0: any address
        }
        return bytes
    }

    static func operation(_ code: UInt8, yes: Int, no: Int) -> [UInt8] {
        [code, UInt8(yes)] + UInt16(no).hostOrderBytes
    }
}
