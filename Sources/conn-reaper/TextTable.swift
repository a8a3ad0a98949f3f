import NetworkAddress

/// An ss-like table built as bytes, padded by byte width (every cell is ASCII): with a String per
/// cell, printing a 20,000-socket purge took a third as long as the purge itself.
struct TextTable {
    private var bytes: [UInt8] = []
    /// Where each cell ends in `bytes`, row after row.
    private var cellEnds: [Int] = []
    private var widths: [Int]

    init(header: [String]) {
        widths = Array(repeating: 0, count: header.count)
        for title in header { add(title) }
    }

    /// A small table of strings as text, header first, without the last newline (for `print`).
    static func text(_ rows: [[String]]) -> String {
        var table = TextTable(header: rows[0])
        for row in rows.dropFirst() { for cell in row { table.add(cell) } }
        var output: [UInt8] = []
        table.render(into: &output)
        return String(decoding: output.dropLast(), as: UTF8.self)
    }

    mutating func add(_ text: String) {
        bytes.append(contentsOf: text.utf8)
        endCell()
    }

    mutating func add(_ endpoint: Endpoint) {
        endpoint.appendText(to: &bytes)
        endCell()
    }

    mutating func add(_ number: some BinaryInteger) {
        bytes.appendDecimal(UInt64(number))
        endCell()
    }

    /// A cell whose text the caller writes.
    mutating func add(writing: (inout [UInt8]) -> Void) {
        writing(&bytes)
        endCell()
    }

    private mutating func endCell() {
        let start = cellEnds.last ?? 0
        let column = cellEnds.count % widths.count
        widths[column] = max(widths[column], bytes.count - start)
        cellEnds.append(bytes.count)
    }

    /// The rows, two spaces between columns, no trailing spaces, a newline after each row.
    func render(into output: inout [UInt8]) {
        precondition(cellEnds.count % widths.count == 0, "a row left unfinished")
        output.reserveCapacity(output.count + cellEnds.count / widths.count * (widths.reduce(0, +) + 2 * widths.count))
        var start = 0
        for (index, end) in cellEnds.enumerated() {
            output.append(contentsOf: bytes[start..<end])
            let column = index % widths.count
            if column == widths.count - 1 {
                output.append(UInt8(ascii: "\n"))
            } else {
                output.append(contentsOf: repeatElement(UInt8(ascii: " "), count: widths[column] - (end - start) + 2))
            }
            start = end
        }
    }
}
