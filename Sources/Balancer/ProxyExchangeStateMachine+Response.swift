import MiniHTTP

// The response of an exchange: its head rewritten for the client, its body framed, its end
// deciding what happens to both connections.
extension ProxyExchangeStateMachine {
    /// What the loop does with a response head.
    enum ResponseHeadAction: Equatable {
        /// An interim (1xx) response: dropped, with its end (the client had its 100 Continue from the balancer).
        case skip
        /// Not forwardable (101: protocol switches are not supported): treat as an invalid response.
        case reject(HTTPParseError)
        /// Send this head to the client.
        case send([UInt8])
    }

    /// The response parser produced a head; `clientClosed`: the client sent its last byte;
    /// `stopping`: the balancer is shutting down (both close the client after this response).
    mutating func responseHead(_ head: HTTPResponseHead, clientClosed: Bool, stopping: Bool) -> ResponseHeadAction {
        if head.isInterim {
            if head.status == 101 { return .reject(HTTPParseError(status: 502, reason: "protocol switch not supported")) }
            phase = .skippingInterim
            return .skip
        }
        responseKeepAlive = head.keepAlive
        let keep = clientKeepAlive && bodyDone && !clientClosed && !stopping
        let rewritten = HeaderRewriting.responseHead(head, clientVersion: clientVersion, keepAlive: keep)
        phase = .streaming(rewritten.framing)
        clientKeepAlive = rewritten.keepAlive
        return .send(rewritten.bytes)
    }

    /// What the loop does with a piece of the response body.
    enum ResponseBodyAction: Equatable {
        /// Part of an interim response: dropped.
        case drop
        /// Send the bytes as they are.
        case send
        /// Send the bytes as one chunk.
        case sendChunk
    }

    /// The response parser produced body bytes (the loop keeps them; only the framing is decided here).
    func responseBody() -> ResponseBodyAction {
        switch phase {
        case .skippingInterim: .drop
        case .streaming(.chunked): .sendChunk
        default: .send
        }
    }

    /// What the loop does at the end of a response.
    enum ResponseEndAction: Equatable {
        /// An interim response ended: the final one follows; read on.
        case readOn
        /// The exchange is over: send the last chunk (`lastChunk`), pool the backend connection
        /// (`reuseBackend`, else close it), and keep the client connection (`keepClient`, else close it
        /// once its output is written).
        case finish(lastChunk: Bool, reuseBackend: Bool, keepClient: Bool)
    }

    /// The response parser reached the end of a response; `connectionClean`: the backend connection
    /// could carry another request as far as the loop sees (nothing left to write or read, no
    /// hang-up, the balancer not stopping).
    mutating func responseEnded(connectionClean: Bool) -> ResponseEndAction {
        if phase == .skippingInterim {
            phase = .requesting
            return .readOn
        }
        let framing = if case .streaming(let framing) = phase { framing } else { ClientFraming.asIs }
        phase = .done
        return .finish(
            lastChunk: framing == .chunked, reuseBackend: responseKeepAlive && bodyDone && connectionClean,
            keepClient: clientKeepAlive && framing != .untilClose)
    }
}
