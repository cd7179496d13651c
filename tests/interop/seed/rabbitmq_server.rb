#!/usr/bin/env ruby
# The seed's RabbitMQ server (Bunny), transcribed from the blog post. Deviations:
# - the Calculator class of the seed's calculator.rb is written out here rather than required
#   from ./calculator, so that this file runs from any directory;
# - the queue is named by $QUEUE when set (tests use unique names), else the seed's 'calc';
# - the post's listing is cut off inside `x.publish(JSON.generate(reply), {`: the arguments
#   are completed as the post's text and client imply - reply to the request's `reply_to`
#   with its `correlation_id` - and the blocks closed;
# - OCR damage repaired: `conn.create channel` -> `create_channel`, `ch.default exchange` ->
#   `default_exchange`, the lost `reply = {` / `}` lines and `end`s, "RabbitMO" in a comment.
# The handler is the seed's, `calculator.send *args` and no error handling included: one
# malformed request kills it (our worker answers such a request and goes on).
require 'bunny'
require 'json'

class Calculator

  def add(a, b)
    return a+b
  end

  def subtract(a, b)
    return a-b
  end

end

calculator = Calculator.new

# connect to RabbitMQ
conn = Bunny.new
conn.start

# create a channel and exchange that both client and server know about
ch = conn.create_channel
q = ch.queue(ENV.fetch('QUEUE', 'calc'))
x = ch.default_exchange

$stdout.puts "ready"
$stdout.flush

q.subscribe(block: true) do |delivery_info, properties, payload|
  req_message = JSON.parse payload

  # calculate a result
  result = calculator.send *(req_message['params'].unshift(req_message['method']))

  reply = {
    'id' => req_message['id'],
    'result' => result,
    'jsonrpc' => '2.0'
  }

  # enqueue our reply in the return queue
  x.publish(JSON.generate(reply), {
    routing_key: properties.reply_to,
    correlation_id: properties.correlation_id
  })
end
