#!/usr/bin/env ruby
# The seed's http_server.rb (Sinatra), transcribed. Deviations, all needed to run it in a test:
# - the Calculator class of the seed's calculator.rb is written out here rather than required
#   from ./calculator, so that this file runs from any directory;
# - `set :bind` / `set :port` listen on 127.0.0.1 and the port the test gives in $PORT,
#   instead of Sinatra's default 4567 on every interface;
# - `set :server, 'webrick'` names the Rack server that is installed (ruby-sinatra brings no
#   other), and `set :environment, :production` keeps Sinatra from printing debug pages.
# The handler itself is the seed's, `calculator.send *args` included (a remote code execution
# hole our worker does not have; here it only ever serves the test).
require 'sinatra'

class Calculator

  def add(a, b)
    return a+b
  end

  def subtract(a, b)
    return a-b
  end

end

set :bind, '127.0.0.1'
set :port, ENV.fetch('PORT')
set :server, 'webrick'
set :environment, :production

calculator = Calculator.new

post '/calc' do
  req = JSON.parse(request.body.read)

  # call a method on the calculator instance, passing along params
  args = req['params'].unshift(req['method'])
  result = calculator.send *args

  # HTTP stuff
  status 200
  headers 'Content-Type' => 'application/json'

  # make sure to encode response as JSON
  JSON.generate({
    'id' => req['id'],
    'result' => result,
    'jsonrpc' => '2.0'
  })
end
