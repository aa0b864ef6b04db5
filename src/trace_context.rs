//! Trace context across processes (cargo feature `opentelemetry`).
//!
//! A send carries the context of the current span in the message's headers,
//! written by the application's global text-map propagator (W3C
//! `traceparent` and `tracestate` with OpenTelemetry's
//! `TraceContextPropagator`); a received message gives it back
//! ([`QueuedMessage::trace_context`](crate::QueuedMessage::trace_context)).
//! Headers are stored by every provider and survive dead-lettering, put-backs
//! and moves between providers, so the context does too.
//!
//! Without the feature, [`inject`] hands the options back untouched.

use std::borrow::Cow;

use crate::SendOptions;

/// The options a send goes out with: `options`, plus the current trace
/// context's headers when there is a sampled or unsampled but valid span
/// context and the caller did not set those headers itself (the caller's
/// win). Keys the library reserves are never injected.
#[cfg(feature = "opentelemetry")]
pub(crate) fn inject(options: &SendOptions) -> Cow<'_, SendOptions> {
    use opentelemetry::{global, trace::TraceContextExt};

    let cx = current();
    if !cx.span().span_context().is_valid() {
        return Cow::Borrowed(options);
    }
    let mut fields = crate::Headers::new();
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&cx, &mut Carrier(&mut fields));
    });
    fields.retain(|key, _| {
        !crate::send_options::is_reserved_header(key) && !options.header_map().contains_key(key)
    });
    if fields.is_empty() {
        return Cow::Borrowed(options);
    }
    Cow::Owned(options.clone().headers(fields))
}

/// Without the feature there is no context to carry.
#[cfg(not(feature = "opentelemetry"))]
#[inline(always)]
pub(crate) fn inject(options: &SendOptions) -> Cow<'_, SendOptions> {
    Cow::Borrowed(options)
}

/// The context a send carries: the current `tracing` span's, when an
/// OpenTelemetry layer (`tracing-opentelemetry`) gives it one, else
/// OpenTelemetry's own current context (code that uses its API directly).
#[cfg(feature = "opentelemetry")]
fn current() -> opentelemetry::Context {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        cx
    } else {
        opentelemetry::Context::current()
    }
}

/// The context the headers of a received message carry, read by the
/// application's global text-map propagator; an empty context when they
/// carry none.
#[cfg(feature = "opentelemetry")]
pub(crate) fn extract(headers: &crate::Headers) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Reader(headers))
    })
}

/// Headers being written by a propagator.
#[cfg(feature = "opentelemetry")]
struct Carrier<'a>(&'a mut crate::Headers);

#[cfg(feature = "opentelemetry")]
impl opentelemetry::propagation::Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        // Propagators write lower-case W3C keys; keep them as they are.
        self.0.insert(key.to_owned(), value);
    }
}

/// A received message's headers, read by a propagator.
#[cfg(feature = "opentelemetry")]
struct Reader<'a>(&'a crate::Headers);

#[cfg(feature = "opentelemetry")]
impl opentelemetry::propagation::Extractor for Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // Header keys are matched without case, as HTTP's are.
        self.0.get(key).map(String::as_str).or_else(|| {
            self.0
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
        })
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
