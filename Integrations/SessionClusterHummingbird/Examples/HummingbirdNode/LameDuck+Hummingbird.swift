import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTPTypes
import ServiceLifecycle
import SessionClusterNodeKit

/// While the node drains, adds `Connection: close` to every response (error
/// answers included), so every client, such as a balancer's pooled connection,
/// stops using its connection after the response it is reading.
struct LameDuckMiddleware<Context: RequestContext>: RouterMiddleware {
    let lameDuck: LameDuck

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        guard lameDuck.isDraining else { return try await next(request, context) }
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as any HTTPResponseError {
            response = try error.response(from: request, context: context)
        } catch {
            response = Response(status: .internalServerError)  // what Hummingbird answers to other errors
        }
        response.headers[.connection] = "close"
        return response
    }
}

/// Closes the connection once a response that carries `Connection: close` has
/// been written, as HTTP/1.1 asks of a server that sends it (Hummingbird
/// closes after a response only when the request asked for it, or when it
/// shuts down). Between the HTTP/1 codec and Hummingbird's connection handler
/// (`HTTP1Channel.Configuration.additionalChannelHandlers`).
final class CloseAfterConnectionCloseHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private var closeAfterResponse = false

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head):
            if head.status.kind != .informational {
                closeAfterResponse = head.headerFields[values: .connection].contains { value in
                    value.split(separator: ",").contains { $0.trimmingCharacters(in: .whitespaces).lowercased() == "close" }
                }
            }
            context.write(data, promise: promise)
        case .body:
            context.write(data, promise: promise)
        case .end:
            guard closeAfterResponse else {
                context.write(data, promise: promise)
                return
            }
            closeAfterResponse = false
            let written = promise ?? context.eventLoop.makePromise()
            let loopBoundContext = context.loopBound
            written.futureResult.whenComplete { _ in loopBoundContext.value.close(promise: nil) }
            context.writeAndFlush(data, promise: written)
        }
    }
}

/// The lame duck as a service placed after the application in a `ServiceGroup`:
/// on the group's graceful shutdown (SIGTERM, SIGINT) it drains. The group shuts
/// its services down in reverse order and waits for each to finish, so the
/// application keeps serving (and listening) until `drain()` returned.
struct LameDuckService: Service {
    let lameDuck: LameDuck
    let logger: Logger

    func run() async throws {
        try await gracefulShutdown()  // CancellationError when the group is cancelled instead
        logger.info("signal received, draining", metadata: ["drain_delay_ms": "\(lameDuck.delayMillis)"])
        await lameDuck.drain()
        logger.info("drained, stopping the server")
    }
}
