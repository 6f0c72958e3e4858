package events

import "github.com/prometheus/client_golang/prometheus"

// Metric names shared by every service on the event bus.
const (
	MetricPublished = "portcullis_events_published_total"
	MetricReceived  = "portcullis_events_received_total"
)

// PublishedCounter registers the publisher's counter and returns a PublisherConfig.Published.
func PublishedCounter(reg prometheus.Registerer) (func(kind string, err error), error) {
	return counter(reg, MetricPublished, "Rotation events handed to NATS JetStream, by kind and result (ok, error).")
}

// ReceivedCounter registers the subscriber's counter and returns a SubscriberConfig.Received.
func ReceivedCounter(reg prometheus.Registerer) (func(kind string, err error), error) {
	return counter(reg, MetricReceived, "Rotation events received, by kind and result (ok, skipped).")
}

func counter(reg prometheus.Registerer, name, help string) (func(string, error), error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"kind", "result"})
	if err := reg.Register(c); err != nil {
		return nil, err
	}
	return func(kind string, err error) {
		result := "ok"
		if err != nil {
			result = "skipped"
			if name == MetricPublished {
				result = "error"
			}
		}
		c.WithLabelValues(kind, result).Inc()
	}, nil
}
