// What a JVM service does on day one, one step per argument, each printing one line:
//   env=NAME  lookup=NAME  dial=HOST:PORT (send "ping", print the reply)  cat=PATH
//   serve=PORT (com.sun.net.httpserver: answer "from the JVM", log each request; runs until killed)
import com.sun.net.httpserver.HttpServer;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;

public class Probe {
    public static void main(String[] args) throws Exception {
        for (String arg : args) {
            String verb = arg.substring(0, arg.indexOf('='));
            String what = arg.substring(arg.indexOf('=') + 1);
            try {
                switch (verb) {
                    case "env" -> System.out.println("env " + what + "=" + System.getenv(what));
                    case "lookup" -> System.out.println("lookup " + what + " " + Arrays.stream(
                            InetAddress.getAllByName(what)).map(InetAddress::getHostAddress).toList());
                    case "dial" -> {
                        int colon = what.lastIndexOf(':');
                        try (Socket s = new Socket()) {
                            s.connect(new InetSocketAddress(what.substring(0, colon),
                                    Integer.parseInt(what.substring(colon + 1))), 5000);
                            s.getOutputStream().write("ping\n".getBytes(StandardCharsets.UTF_8));
                            BufferedReader in = new BufferedReader(new InputStreamReader(
                                    s.getInputStream(), StandardCharsets.UTF_8));
                            System.out.println("dial " + what + ": " + in.readLine());
                        }
                    }
                    case "cat" -> System.out.println("cat " + what + ": " + Files.readString(Path.of(what)).strip());
                    case "serve" -> serve(Integer.parseInt(what));
                    default -> System.out.println("unknown step " + arg);
                }
            } catch (Exception e) {
                System.out.println(verb + " " + what + " error: " + e);
            }
            System.out.flush();
        }
    }

    static void serve(int port) throws Exception {
        HttpServer server = HttpServer.create(new InetSocketAddress(port), 16);
        server.createContext("/", exchange -> {
            System.err.println("Handling request URI=" + exchange.getRequestURI());
            byte[] body = "This is a silly demo from the JVM\n".getBytes(StandardCharsets.UTF_8);
            exchange.sendResponseHeaders(200, body.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(body);
            }
        });
        server.start();
        System.err.println("Listening on " + port);
        Thread.currentThread().join();
    }
}
