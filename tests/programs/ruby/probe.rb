# What a Ruby service does on day one, one step per argument, each printing one line:
#   env=NAME  lookup=NAME  dial=HOST:PORT (send "ping", print the reply)  cat=PATH
#   serve=PORT (answer HTTP with "from Ruby", log each request; runs until killed)
require "socket"
$stdout.sync = true
$stderr.sync = true

def serve(port)
  server = TCPServer.new("0.0.0.0", port)
  warn "Listening on #{port}"
  loop do
    client = server.accept
    request = client.gets.to_s
    while (line = client.gets) && line != "\r\n"; end
    warn "Handling request URI=#{request.split[1]}"
    body = "This is a silly demo from Ruby\n"
    client.write("HTTP/1.1 200 OK\r\nContent-Length: #{body.bytesize}\r\nConnection: close\r\n\r\n#{body}")
    client.close
  end
end

ARGV.each do |arg|
  verb, what = arg.split("=", 2)
  begin
    case verb
    when "env" then puts "env #{what}=#{ENV[what]}"
    when "lookup" then puts "lookup #{what} #{Addrinfo.getaddrinfo(what, nil, nil, :STREAM).map(&:ip_address).uniq}"
    when "dial"
      host, port = what.rpartition(":").values_at(0, 2)
      sock = Socket.tcp(host, port.to_i, connect_timeout: 5)
      sock.write("ping\n")
      puts "dial #{what}: #{sock.gets&.chomp}"
      sock.close
    when "cat" then puts "cat #{what}: #{File.read(what).strip}"
    when "serve" then serve(what.to_i)
    else puts "unknown step #{arg}"
    end
  rescue StandardError => e
    puts "#{verb} #{what} error: #{e.class}: #{e.message}"
  end
end
